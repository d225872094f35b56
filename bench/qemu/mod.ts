/**
 * The QEMU column of the benchmark suite: runs one real QEMU 7.2 live migration per
 * {@link ScenarioSpec} — source and destination `qemu-system-x86_64` (TCG) on this
 * host over loopback tcp or a unix socket — driven through QMP, and reports what QEMU
 * itself measured as a {@link MigrationRun}. Also a CLI:
 *
 *   deno run -A bench/qemu/mod.ts --ram 1G --fill random --workload paused --transport tcp
 */

import type { GuestWorkload, MigrationRun, ScenarioSpec, Skipped } from "./types.ts";
import { QmpClient } from "./qmp.ts";
import { parseQemuConfigs, QEMU_CONFIGS, withConfig } from "./configs.ts";
import { peakRss } from "../stats.ts";
import {
  assembleGuest,
  guestParamsFor,
  type GuestStatus,
  parseStatus,
  patchGuest,
  STATUS_XP_COMMAND,
} from "./guest.ts";

export type { GuestWorkload, MigrationRun, ScenarioSpec, Skipped } from "./types.ts";

/** The QEMU binary driven here. */
export const QEMU_BINARY = "qemu-system-x86_64";

/** `runQemu` was called although {@link qemuAvailable} said the column cannot run. */
export class QemuSkippedError extends Error {
  constructor(readonly skipped: string) {
    super(`skipped: ${skipped}`);
    this.name = "QemuSkippedError";
  }
}

/** QEMU misbehaved: exited early, never came up, refused a command the harness needs. */
export class QemuRunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QemuRunError";
  }
}

/** Extra knobs for manual runs; the suite calls {@link runQemu} with the spec only. */
export interface RunQemuOptions {
  /**
   * Before migrating a running guest, measure its dirty rate once with QEMU's
   * `calc-dirty-rate` (page-sampling, 1 s) and add the figure to the note.
   */
  readonly measureDirtyRate?: boolean;
  /** Progress lines (boot, start, finish) for the CLI; silent when absent. */
  readonly log?: (line: string) => void;
  /** Aborting stops the run early (the CLI's Ctrl-C); both QEMUs are still cleaned up. */
  readonly signal?: AbortSignal;
  /**
   * Where the destination runs and how the source reaches it (bench/slow_link.ts:
   * a network namespace behind a shaped link). Default: both on loopback.
   */
  readonly network?: QemuNetwork;
}

/** The destination's network placement for {@link runQemu} (tcp only). */
export interface QemuNetwork {
  /** Prepended to the destination's command line, e.g. `ip netns exec NS`. */
  readonly destinationPrefix: readonly string[];
  /** The address the destination listens on (its port is chosen by the kernel). */
  readonly listenHost: string;
  /**
   * Given the destination's port, the URI the source migrates to (e.g. through a
   * delay relay) and how to tear that path down after the run.
   */
  readonly route: (port: number) => Promise<{ uri: string; close(): Promise<void> }>;
}

// ---------------------------------------------------------------------------------
// availability

let availability: Promise<true | Skipped> | undefined;

/**
 * Whether real QEMU migrations can run here: `qemu-system-x86_64` and `nasm` (for the
 * guest program) must be runnable; each is installed with apt-get when missing. The
 * answer is cached for the life of the process.
 */
export function qemuAvailable(): Promise<true | Skipped> {
  availability ??= probe();
  return availability;
}

const TOOLS = [
  { bin: QEMU_BINARY, versionArg: "--version", pkg: "qemu-system-x86" },
  { bin: "nasm", versionArg: "-v", pkg: "nasm" },
] as const;

async function probe(): Promise<true | Skipped> {
  for (const tool of TOOLS) {
    if (await runs(tool.bin, [tool.versionArg])) continue;
    const installed = await aptInstall(tool.pkg);
    if (installed !== true) {
      return { skipped: `${tool.bin} not found and installing ${tool.pkg} failed: ${installed}` };
    }
    if (!(await runs(tool.bin, [tool.versionArg]))) {
      return { skipped: `${tool.bin} still not runnable after apt-get install ${tool.pkg}` };
    }
  }
  const accel = await output(QEMU_BINARY, ["-accel", "help"]);
  if (accel === undefined || !/\btcg\b/.test(accel)) {
    return { skipped: `${QEMU_BINARY} has no TCG accelerator` };
  }
  return true;
}

async function runs(bin: string, args: string[]): Promise<boolean> {
  return (await output(bin, args)) !== undefined;
}

async function output(bin: string, args: string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(bin, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    return out.success ? new TextDecoder().decode(out.stdout) : undefined;
  } catch {
    return undefined;
  }
}

/** `apt-get update && apt-get install -y pkg`; true or the reason it failed. */
async function aptInstall(pkg: string): Promise<true | string> {
  try {
    const out = await new Deno.Command("sh", {
      args: ["-c", `apt-get update && apt-get install -y ${pkg}`],
      env: { DEBIAN_FRONTEND: "noninteractive" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (out.success) return true;
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-2).join(" / ");
    return `apt-get exited with ${out.code}${err ? `: ${err}` : ""}`;
  } catch (e) {
    return `cannot run apt-get: ${(e as Error).message}`;
  }
}

// ---------------------------------------------------------------------------------
// guest RAM contents

const MiB = 1024 * 1024;

/** Path of the shared random-filled RAM image for `ramBytes` (created once, reused). */
export function randomFillPath(ramBytes: number): string {
  return `/dev/shm/ferry-bench-qemu-random-${ramBytes / MiB}M`;
}

/**
 * Creates (once) a /dev/shm file of `ramBytes` random bytes. The source maps it with
 * `share=off`, so runs never change it and every run starts from the same contents.
 */
export async function ensureRandomFill(ramBytes: number): Promise<string> {
  const path = randomFillPath(ramBytes);
  try {
    if ((await Deno.stat(path)).size === ramBytes) return path;
  } catch {
    // not there yet
  }
  const tmp = `${path}.${Deno.pid}.tmp`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    const chunk = new Uint8Array(16 * MiB);
    for (let done = 0; done < ramBytes;) {
      const n = Math.min(chunk.length, ramBytes - done);
      for (let off = 0; off < n; off += 65536) {
        crypto.getRandomValues(chunk.subarray(off, Math.min(off + 65536, n)));
      }
      let w = 0;
      while (w < n) w += await file.write(chunk.subarray(w, n));
      done += n;
    }
  } catch (e) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  file.close();
  await Deno.rename(tmp, path);
  return path;
}

/**
 * A /dev/shm copy of the RAM image at `image` (created once per image and size,
 * reused), for the source's `memory-backend-file`: the random scenarios' RAM
 * lives there too. Zero pages are left as holes, as a guest's never-written RAM.
 */
export async function ensureImageCopy(image: string, ramBytes: number): Promise<string> {
  const info = await Deno.stat(image);
  if (info.size !== ramBytes) {
    throw new RangeError(`the image ${image} holds ${info.size} bytes, the scenario ${ramBytes}`);
  }
  const name = image.replace(/^.*\//, "").replace(/[^A-Za-z0-9._-]/g, "_");
  const path = `/dev/shm/ferry-bench-qemu-image-${name}-${info.mtime?.getTime() ?? 0}`;
  try {
    if ((await Deno.stat(path)).size === ramBytes) return path;
  } catch {
    // not there yet
  }
  const tmp = `${path}.${Deno.pid}.tmp`;
  const src = await Deno.open(image, { read: true });
  const dst = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    await dst.truncate(ramBytes);
    const chunk = new Uint8Array(4 * MiB);
    for (let done = 0; done < ramBytes;) {
      let got = 0;
      while (got < chunk.length && done + got < ramBytes) {
        const n = await src.read(chunk.subarray(got, Math.min(chunk.length, ramBytes - done)));
        if (n === null) throw new RangeError(`the image ${image} ended early`);
        got += n;
      }
      for (let off = 0; off < got; off += 4096) {
        const page = chunk.subarray(off, off + 4096);
        if (page.every((b) => b === 0)) continue;
        await dst.seek(done + off, Deno.SeekMode.Start);
        let w = 0;
        while (w < page.length) w += await dst.write(page.subarray(w));
      }
      done += got;
    }
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  } finally {
    src.close();
    dst.close();
  }
  await Deno.rename(tmp, path);
  return path;
}

// ---------------------------------------------------------------------------------
// processes

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let setprivPath: string | null | undefined;
function setpriv(): string | null {
  if (setprivPath === undefined) {
    setprivPath = null;
    for (const p of ["/usr/bin/setpriv", "/bin/setpriv"]) {
      try {
        Deno.statSync(p);
        setprivPath = p;
        break;
      } catch {
        // look further
      }
    }
  }
  return setprivPath;
}

/** One QEMU process with its QMP session; {@link stop} is idempotent and never throws. */
class QemuProcess {
  readonly child: Deno.ChildProcess;
  readonly pid: number;
  readonly #stderr: Promise<string>;
  readonly #status: Promise<Deno.CommandStatus>;
  exited = false;
  #qmp: QmpClient | undefined;
  #stopped: Promise<void> | undefined;

  constructor(
    readonly role: "source" | "destination",
    args: string[],
    prefix: readonly string[] = [],
  ) {
    // setpriv --pdeathsig: QEMU dies with this process even if we are killed hard.
    // A prefix (ip netns exec) execs what follows, so the pid stays QEMU's.
    const sp = setpriv();
    const argv = [
      ...prefix,
      ...(sp === null ? [] : [sp, "--pdeathsig", "KILL", "--"]),
      QEMU_BINARY,
      ...args,
    ];
    const cmd = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    });
    this.child = cmd.spawn();
    this.pid = this.child.pid;
    this.#stderr = new Response(this.child.stderr).text().catch(() => "");
    this.#status = this.child.status.then((s) => {
      this.exited = true;
      return s;
    });
  }

  get qmp(): QmpClient {
    if (this.#qmp === undefined) throw new QemuRunError(`${this.role} QMP not connected`);
    return this.#qmp;
  }

  /** Connects to the monitor socket, retrying until QEMU listens or `timeoutMs` passes. */
  async connect(path: string, timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (this.exited) throw await this.#exitError("exited during startup");
      try {
        this.#qmp = await QmpClient.connect(path);
        return;
      } catch (e) {
        if (this.exited) throw await this.#exitError("exited during startup");
        if (performance.now() > deadline) {
          throw new QemuRunError(
            `${this.role} QEMU monitor not reachable in ${timeoutMs} ms: ${(e as Error).message}`,
          );
        }
        await sleep(20);
      }
    }
  }

  async #exitError(what: string): Promise<QemuRunError> {
    const status = await this.#status;
    const err = (await this.#stderr).trim();
    return new QemuRunError(
      `${this.role} QEMU ${what} (exit ${status.code}${
        status.signal ? `, ${status.signal}` : ""
      })` +
        (err ? `: ${err}` : ""),
    );
  }

  /** Peak resident set size (VmHWM) in bytes; NaN if /proc cannot tell. */
  peakRss(): number {
    return peakRss(this.pid);
  }

  /** Closes QMP, SIGTERMs QEMU, SIGKILLs it after `graceMs`, and reaps it. */
  stop(graceMs = 1500): Promise<void> {
    this.#stopped ??= this.#stop(graceMs);
    return this.#stopped;
  }

  async #stop(graceMs: number): Promise<void> {
    this.#qmp?.close();
    if (!this.exited) {
      try {
        this.child.kill("SIGTERM");
      } catch {
        // already gone
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = await Promise.race([
        this.#status.then(() => false),
        new Promise<boolean>((r) => timer = setTimeout(() => r(true), graceMs)),
      ]);
      clearTimeout(timer);
      if (timedOut && !this.exited) {
        try {
          this.child.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    await this.#status;
    await this.#stderr;
  }
}

// ---------------------------------------------------------------------------------
// one migration

interface MigrateInfo {
  status?: string;
  "total-time"?: number;
  downtime?: number;
  "expected-downtime"?: number;
  "error-desc"?: string;
  "cpu-throttle-percentage"?: number;
  "socket-address"?: { type?: string; host?: string; port?: string }[];
  ram?: {
    transferred?: number;
    "dirty-sync-count"?: number;
    mbps?: number;
    remaining?: number;
  };
  "xbzrle-cache"?: {
    bytes?: number;
    pages?: number;
    "cache-miss-rate"?: number;
    overflow?: number;
  };
}

const POLL_MS = 15;

function checkSpec(s: ScenarioSpec): void {
  const bad = (what: string) => {
    throw new RangeError(`ScenarioSpec: ${what}`);
  };
  if (!Number.isInteger(s.ramBytes) || s.ramBytes % MiB !== 0 || s.ramBytes < 2 * MiB) {
    bad(`ramBytes ${s.ramBytes} must be a multiple of 1 MiB, at least 2 MiB`);
  }
  if (!(s.maxBandwidth > 0)) bad(`maxBandwidth ${s.maxBandwidth} must be > 0`);
  if (!(s.downtimeLimitMs >= 0)) bad(`downtimeLimitMs ${s.downtimeLimitMs} must be >= 0`);
  if (!(s.timeoutS > 0)) bad(`timeoutS ${s.timeoutS} must be > 0`);
  if (s.multifd !== undefined && !(s.multifd.channels >= 1)) {
    bad(`multifd.channels ${s.multifd.channels} must be >= 1`);
  }
  if (s.xbzrle !== undefined && !(s.xbzrle.cacheBytes >= 4096)) {
    bad(`xbzrle.cacheBytes ${s.xbzrle.cacheBytes} must be >= 4096`);
  }
  if (s.multifd?.zstdLevel !== undefined && !(s.multifd.zstdLevel >= 0)) {
    bad(`multifd.zstdLevel ${s.multifd.zstdLevel} must be >= 0`);
  }
}

/** The machine options both ends share (so their RAM blocks and devices match). */
function machineArgs(ramBytes: number, qmpPath: string, name: string): string[] {
  return [
    "-name",
    name,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-accel",
    "tcg",
    "-machine",
    "pc,memory-backend=ram0",
    "-m",
    `${ramBytes / MiB}M`,
    "-smp",
    "1",
    "-chardev",
    `socket,id=qmp,path=${qmpPath},server=on,wait=off`,
    "-mon",
    "chardev=qmp,mode=control",
  ];
}

async function guestStatus(p: QemuProcess): Promise<GuestStatus> {
  const out = await p.qmp.execute<string>("human-monitor-command", {
    "command-line": STATUS_XP_COMMAND,
  });
  return parseStatus(out);
}

/** Waits until the guest's workload loop runs (and, for `ab`, one full pass is done). */
async function waitGuestReady(
  p: QemuProcess,
  workload: GuestWorkload,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<GuestStatus> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    signal?.throwIfAborted();
    const st = await guestStatus(p);
    if (st.ready && (workload.kind !== "ab" || st.count >= 1)) return st;
    if (performance.now() > deadline) {
      throw new QemuRunError(
        `guest not ready after ${timeoutMs} ms (status ${JSON.stringify(st)})`,
      );
    }
    await sleep(20);
  }
}

/**
 * One `calc-dirty-rate` on the source (page-sampling, the mode QEMU 7.2 supports under
 * TCG: dirty-bitmap mode crashes it); QEMU's figure in MB/s.
 */
async function measureDirtyRate(p: QemuProcess, seconds: number): Promise<number> {
  await p.qmp.execute("calc-dirty-rate", { "calc-time": seconds, mode: "page-sampling" });
  const deadline = performance.now() + seconds * 1000 + 10_000;
  for (;;) {
    await sleep(100);
    const r = await p.qmp.execute<{ status?: string; "dirty-rate"?: number }>("query-dirty-rate");
    if (r.status === "measured") return r["dirty-rate"] ?? NaN;
    if (performance.now() > deadline) throw new QemuRunError("calc-dirty-rate never finished");
  }
}

/** The larger of two readings, ignoring NaN (a process that already exited). */
const maxKnown = (a: number, b: number) =>
  Number.isNaN(a) ? b : Number.isNaN(b) ? a : Math.max(a, b);

const fmtMBps = (bps: number) => `${(bps / 1e6).toFixed(1)} MB/s`;

/**
 * Runs one migration of `s` with real QEMU: starts a destination (`-incoming defer`,
 * RAM prefaulted unless `s.qemuRam` says otherwise) and a source (RAM from the
 * shared random file, the image's copy or zero, mapped as `s.qemuRam` says), boots
 * the guest workload, sets QEMU's parameters and capabilities, migrates and polls
 * `query-migrate` until it completes, fails or `s.timeoutS` passes (then cancels).
 * Both processes and all temporary files are gone when it returns or throws.
 */
export async function runQemu(s: ScenarioSpec, opts: RunQemuOptions = {}): Promise<MigrationRun> {
  checkSpec(s);
  const avail = await qemuAvailable();
  if (avail !== true) throw new QemuSkippedError(avail.skipped);
  const log = opts.log ?? (() => {});
  const running = s.workload.kind !== "paused";

  const params = running ? guestParamsFor(s.workload, s.ramBytes) : undefined;
  const image = params ? patchGuest(await assembleGuest(), params) : undefined;
  const fillPath = s.image !== undefined
    ? await ensureImageCopy(s.image, s.ramBytes)
    : s.fill === "random"
    ? await ensureRandomFill(s.ramBytes)
    : undefined;

  const share = s.qemuRam?.sourceShare ?? false;
  const dstPrealloc = s.qemuRam?.destinationPrealloc ?? true;
  if (opts.network && s.transport !== "tcp") {
    throw new RangeError("runQemu: a destination network needs the tcp transport");
  }
  const dir = await Deno.makeTempDir({ prefix: "ferry-bench-qemu-" });
  const procs: QemuProcess[] = [];
  // A running guest writes its RAM: with share=on it gets a copy of its own, so the
  // shared fill file stays as it was for the next run.
  let runCopy: string | undefined;
  let route: { uri: string; close(): Promise<void> } | undefined;
  try {
    let srcPath = fillPath;
    if (fillPath && share && running) {
      runCopy = `/dev/shm/ferry-bench-qemu-run-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
      await Deno.copyFile(fillPath, runCopy);
      srcPath = runCopy;
    }
    const kernelArgs: string[] = [];
    if (image) {
      await Deno.writeFile(`${dir}/guest.bin`, image);
      kernelArgs.push("-kernel", `${dir}/guest.bin`);
    }
    const dstArgs = [
      ...machineArgs(s.ramBytes, `${dir}/dst.qmp`, "ferry-bench-dst"),
      "-object",
      `memory-backend-ram,id=ram0,size=${s.ramBytes},prealloc=${dstPrealloc ? "on" : "off"}`,
      ...kernelArgs,
      "-incoming",
      "defer",
    ];
    // Source RAM: the random file (or image copy) mapped shared or copy-on-write (a
    // paused guest reads it in place; a running guest faults it all in up front, so
    // its writes do not pay for first-touch faults mid-migration), or prefaulted zero
    // RAM. This VM's kernel has no shared zero page, so untouched anonymous RAM would
    // be faulted in by the migration's own reads (1 GiB idle: ~4 s instead of ~0.1 s).
    const shareArg = `share=${share ? "on" : "off"}`;
    const srcArgs = [
      ...machineArgs(s.ramBytes, `${dir}/src.qmp`, "ferry-bench-src"),
      "-object",
      srcPath
        ? `memory-backend-file,id=ram0,size=${s.ramBytes},mem-path=${srcPath},${shareArg}${
          running ? ",prealloc=on" : ""
        }`
        : `memory-backend-ram,id=ram0,size=${s.ramBytes},${shareArg},prealloc=on`,
      ...kernelArgs,
      ...(running ? [] : ["-S"]),
    ];
    const dst = new QemuProcess("destination", dstArgs, opts.network?.destinationPrefix);
    procs.push(dst);
    const src = new QemuProcess("source", srcArgs);
    procs.push(src);
    log(`started source pid ${src.pid}, destination pid ${dst.pid}`);
    await Promise.all([
      src.connect(`${dir}/src.qmp`, 60_000),
      dst.connect(`${dir}/dst.qmp`, 60_000),
    ]);

    const notes: string[] = [];
    let tscHz = NaN;
    if (running) {
      const st = await waitGuestReady(src, s.workload, 60_000, opts.signal);
      tscHz = st.tscPer50ms * 20;
      log(`guest ready${st.tscPer50ms ? `, TSC ${(tscHz / 1e9).toFixed(2)} GHz` : ""}`);
      if (opts.measureDirtyRate) {
        const before = await guestStatus(src);
        const t = performance.now();
        const rate = await measureDirtyRate(src, 1);
        const own = s.workload.kind === "dirty"
          ? `, guest's own count ${
            fmtMBps(
              ((await guestStatus(src)).count - before.count) * 4096 /
                ((performance.now() - t) / 1000),
            )
          }`
          : "";
        notes.push(`before migrating: calc-dirty-rate ${rate} MB/s${own}`);
        log(notes[notes.length - 1]);
      }
    }

    const caps = [
      { capability: "xbzrle", state: s.xbzrle !== undefined },
      { capability: "auto-converge", state: s.autoConverge === true },
      ...(s.multifd ? [{ capability: "multifd", state: true }] : []),
    ];
    await src.qmp.execute("migrate-set-capabilities", { capabilities: caps });
    // `events`: the destination announces its completion with a MIGRATION event.
    await dst.qmp.execute("migrate-set-capabilities", {
      capabilities: [...caps, { capability: "events", state: true }],
    });
    const migParams: Record<string, number | string> = {
      "max-bandwidth": Math.round(s.maxBandwidth),
      "downtime-limit": Math.round(s.downtimeLimitMs),
    };
    if (s.xbzrle) migParams["xbzrle-cache-size"] = s.xbzrle.cacheBytes;
    if (s.multifd) {
      // Both ends must agree on the channels and the compression.
      const multifd: Record<string, number | string> = {
        "multifd-channels": s.multifd.channels,
        ...(s.multifd.zstdLevel !== undefined
          ? { "multifd-compression": "zstd", "multifd-zstd-level": s.multifd.zstdLevel }
          : {}),
      };
      Object.assign(migParams, multifd);
      await dst.qmp.execute("migrate-set-parameters", multifd);
    }
    await src.qmp.execute("migrate-set-parameters", migParams);

    let uri: string;
    if (s.transport === "unix") {
      uri = `unix:${dir}/migrate.sock`;
      await dst.qmp.execute("migrate-incoming", { uri });
    } else {
      const host = opts.network?.listenHost ?? "127.0.0.1";
      await dst.qmp.execute("migrate-incoming", { uri: `tcp:${host}:0` });
      const info = await dst.qmp.execute<MigrateInfo>("query-migrate");
      const port = info["socket-address"]?.find((a) => a.port !== undefined)?.port;
      if (port === undefined) {
        throw new QemuRunError(`destination did not report its port: ${JSON.stringify(info)}`);
      }
      uri = `tcp:${host}:${port}`;
      if (opts.network) {
        route = await opts.network.route(Number(port));
        uri = route.uri;
      }
    }
    // The destination's own word that it completed (or failed): its MIGRATION event,
    // read as it comes. From here on the destination's QMP only waits for it.
    const dstEnd = dst.qmp.nextEvent((e) => {
      const st = (e.data as { status?: string } | undefined)?.status;
      return e.event === "MIGRATION" && (st === "completed" || st === "failed");
    }).then(
      (e) => ({ status: (e.data as { status: string }).status, at: e.receivedAt }),
      (err: Error) => ({ status: `unknown (${err.message})`, at: NaN }),
    );

    const counting = s.workload.kind === "dirty" || s.workload.kind === "ab";
    const count0 = counting ? (await guestStatus(src)).count : 0;
    const t0 = performance.now();
    await src.qmp.execute("migrate", { uri });
    log(`migrating to ${uri}`);

    let info: MigrateInfo = {};
    let maxThrottle = 0;
    let timedOut = false;
    let dstDoneAt = NaN;
    for (;;) {
      info = await src.qmp.execute<MigrateInfo>("query-migrate");
      maxThrottle = Math.max(maxThrottle, info["cpu-throttle-percentage"] ?? 0);
      if (info.status === "completed" || info.status === "failed") break;
      if (info.status === "cancelled") break;
      opts.signal?.throwIfAborted();
      if (performance.now() - t0 > s.timeoutS * 1000) {
        timedOut = true;
        break;
      }
      await sleep(POLL_MS);
    }

    let count1 = count0;
    let guestSeconds = NaN;
    if (counting) {
      count1 = (await guestStatus(src)).count;
      guestSeconds = info.status === "completed"
        ? ((info["total-time"] ?? NaN) - (info.downtime ?? 0)) / 1000
        : (performance.now() - t0) / 1000;
    }

    // VmHWM only grows; sample it now too, since a cancelled destination exits on its own.
    const rss = { src: src.peakRss(), dst: dst.peakRss() };
    if (timedOut) {
      await src.qmp.execute("migrate_cancel");
      const deadline = performance.now() + 10_000;
      for (;;) {
        const st = await src.qmp.execute<MigrateInfo>("query-migrate");
        if (st.status !== "cancelling" && st.status !== "active") break;
        if (performance.now() > deadline) break;
        await sleep(POLL_MS);
      }
      notes.unshift(
        `never completed in ${s.timeoutS} s (${info.ram?.["dirty-sync-count"] ?? 0} passes, ` +
          `expected downtime ${info["expected-downtime"] ?? "?"} ms, ` +
          `${((info.ram?.remaining ?? 0) / MiB).toFixed(1)} MiB remaining)`,
      );
    } else if (info.status !== "completed") {
      notes.unshift(`migration ${info.status}: ${info["error-desc"] ?? "no error given"}`);
    } else {
      // The source is done sending; make sure the destination loaded it all.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const end = await Promise.race([
        dstEnd,
        new Promise<{ status: string; at: number }>((r) =>
          timer = setTimeout(() => r({ status: "still incoming after 30 s", at: NaN }), 30_000)
        ),
      ]);
      clearTimeout(timer);
      if (end.status !== "completed") {
        throw new QemuRunError(
          `destination did not complete the incoming migration: ${end.status}`,
        );
      }
      dstDoneAt = end.at;
    }
    if (maxThrottle > 0) notes.push(`throttle reached ${maxThrottle} %`);
    if (s.workload.kind === "ab" && guestSeconds > 0) {
      const passes = (count1 - count0) / guestSeconds;
      notes.push(`guest made ${passes.toFixed(1)} passes/s over its range during migration`);
    }
    if (s.workload.kind === "dirty" && guestSeconds > 0) {
      const rate = ((count1 - count0) * 4096) / guestSeconds;
      notes.push(
        `guest dirtied ${fmtMBps(rate)} during migration (asked ${
          fmtMBps(s.workload.bytesPerSecond)
        }` +
          `, guest TSC ${(tscHz / 1e9).toFixed(2)} GHz)`,
      );
    }
    const xb = info["xbzrle-cache"];
    if (s.xbzrle && xb) {
      notes.push(
        `xbzrle ${xb.pages ?? 0} pages in ${xb.bytes ?? 0} bytes, cache miss rate ` +
          `${(xb["cache-miss-rate"] ?? 0).toFixed(3)}, overflow ${xb.overflow ?? 0}`,
      );
    }

    const completed = info.status === "completed";
    const mbps = info.ram?.mbps;
    // Once (4 GiB over tcp) QEMU 7.2 answered a completed query-migrate with
    // total-time 0; the wall clock since `migrate` is then the honest figure.
    let totalMs = info["total-time"];
    if (!(totalMs !== undefined && totalMs > 0)) {
      totalMs = performance.now() - t0;
      if (completed) notes.push("QEMU reported no total-time; wall clock since migrate used");
    }
    const run: MigrationRun = {
      completed,
      totalS: totalMs / 1000,
      downtimeMs: completed ? info.downtime ?? NaN : NaN,
      bytes: info.ram?.transferred ?? 0,
      passes: info.ram?.["dirty-sync-count"] ?? 0,
      bandwidthBps: mbps !== undefined && mbps > 0 ? (mbps * 1e6) / 8 : NaN,
      peakRssSrc: maxKnown(rss.src, src.peakRss()),
      peakRssDst: maxKnown(rss.dst, dst.peakRss()),
      ...(notes.length ? { note: notes.join("; ") } : {}),
      ...(s.wall && completed ? { wallS: (dstDoneAt - t0) / 1000 } : {}),
    };
    log(`finished: ${completed ? "completed" : "not completed"} in ${run.totalS.toFixed(3)} s`);
    return run;
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await route?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    if (runCopy) await Deno.remove(runCopy).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------
// CLI

/** Parses `1G`, `256M`, `64KiB` (binary), `50MB`, `1GB` (decimal) or a plain number. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(i?b?)$/i.exec(text.trim());
  if (!m) throw new RangeError(`not a size: ${text}`);
  const n = Number(m[1]);
  const unit = m[2].toLowerCase();
  if (unit === "") return n;
  const exp = "kmgt".indexOf(unit) + 1;
  const decimal = m[3].toLowerCase() === "b"; // "MB" decimal; "M", "MiB" binary
  return Math.round(n * (decimal ? 1000 : 1024) ** exp);
}

/** Parses `paused`, `idle`, `ab:256M`, `dirty:50MB` into a workload. */
export function parseWorkload(text: string): GuestWorkload {
  const [kind, arg] = text.split(":", 2);
  switch (kind) {
    case "paused":
    case "idle":
      return { kind };
    case "ab":
      return { kind, rangeBytes: parseSize(arg ?? "256M") };
    case "dirty":
      return { kind, bytesPerSecond: parseSize(arg ?? "50MB") };
    default:
      throw new RangeError(`unknown workload ${text} (paused, idle, ab:SIZE, dirty:RATE)`);
  }
}

const USAGE = `usage: deno run -A bench/qemu/mod.ts [options]
  --ram SIZE            guest RAM (default 1G; binary units: 1G = 1 GiB)
  --fill random|zero    initial RAM (default random)
  --workload W          paused | idle | ab:RANGE | dirty:RATE  (e.g. ab:256M, dirty:50MB)
  --transport tcp|unix  (default tcp)
  --bandwidth RATE      max-bandwidth, bytes/s (default 100e9; 1GB = 1e9)
  --downtime MS         downtime-limit (default 300)
  --xbzrle SIZE         enable xbzrle with this cache (e.g. 64M)
  --config NAME         one of QEMU's candidate configurations (bench/qemu/configs.ts:
                        ${QEMU_CONFIGS.map((c) => c.name).join(", ")})
  --auto-converge       enable auto-converge
  --timeout S           give up after S seconds (default 20)
  --runs N              repeat (default 1)
  --measure-dirty-rate  run calc-dirty-rate once before migrating a running guest`;

async function main(argv: string[]): Promise<number> {
  const opt: Record<string, string | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new RangeError(`unexpected argument ${a}\n${USAGE}`);
    const [k, inline] = a.slice(2).split("=", 2);
    if (k === "auto-converge" || k === "measure-dirty-rate" || k === "help") opt[k] = true;
    else if (inline !== undefined) opt[k] = inline;
    else if (i + 1 < argv.length) opt[k] = argv[++i];
    else throw new RangeError(`--${k} needs a value\n${USAGE}`);
  }
  if (opt.help) {
    console.log(USAGE);
    return 0;
  }
  const str = (k: string, d: string) => typeof opt[k] === "string" ? opt[k] as string : d;
  const base: ScenarioSpec = {
    ramBytes: parseSize(str("ram", "1G")),
    fill: str("fill", "random") === "zero" ? "zero" : "random",
    workload: parseWorkload(str("workload", "paused")),
    transport: str("transport", "tcp") === "unix" ? "unix" : "tcp",
    maxBandwidth: parseSize(str("bandwidth", "100e9")),
    downtimeLimitMs: Number(str("downtime", "300")),
    ...(typeof opt.xbzrle === "string" ? { xbzrle: { cacheBytes: parseSize(opt.xbzrle) } } : {}),
    autoConverge: opt["auto-converge"] === true,
    timeoutS: Number(str("timeout", "20")),
    wall: true,
  };
  const spec = typeof opt.config === "string"
    ? withConfig(base, parseQemuConfigs(opt.config)[0])
    : base;
  const avail = await qemuAvailable();
  if (avail !== true) {
    console.log(JSON.stringify(avail));
    return 0;
  }
  const runs = Number(str("runs", "1"));
  // Ctrl-C ends the current run through runQemu's cleanup instead of killing us outright.
  const abort = new AbortController();
  const onSignal = () => abort.abort(new Error("interrupted"));
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    for (let i = 0; i < runs; i++) {
      const run = await runQemu(spec, {
        measureDirtyRate: opt["measure-dirty-rate"] === true,
        log: (l) => console.error(`[qemu ${i + 1}/${runs}] ${l}`),
        signal: abort.signal,
      });
      console.log(JSON.stringify(run));
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`qemu bench: ${(e as Error).message}`);
    Deno.exit((e as Error).message === "interrupted" ? 130 : 1);
  }
}
