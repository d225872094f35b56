/**
 * Real QEMU 7.2 processes for the qemu-profile tests: `qemu-system-x86_64 -machine pc`
 * under TCG with the bench's multiboot guest (bench/qemu/guest.ts), driven through QMP.
 * Every wait polls QMP status, never a fixed sleep.
 */
import { QmpClient } from "../../bench/qemu/qmp.ts";
import {
  assembleGuest,
  guestParamsFor,
  type GuestStatus,
  parseStatus,
  patchGuest,
  STATUS_XP_COMMAND,
} from "../../bench/qemu/guest.ts";

/** The analyzer CI fetches (tools/fetch_analyzer.sh). */
export const ANALYZER = new URL("../../.cache/qemu-7.2/analyze-migration.py", import.meta.url)
  .pathname;

/**
 * Why the QEMU tests cannot run here, or null when they can: QEMU, nasm for the guest,
 * python3 and QEMU's analyzer (all of which CI installs: tests/ci_prerequisites_test.ts).
 */
export function qemuMissing(): string | null {
  for (const bin of ["qemu-system-x86_64", "nasm", "python3"]) {
    const probe = new Deno.Command("sh", { args: ["-c", `command -v ${bin}`] }).outputSync();
    if (!probe.success) return `${bin} is not installed`;
  }
  try {
    Deno.statSync(ANALYZER);
  } catch {
    return "QEMU's analyze-migration.py is not fetched (tools/fetch_analyzer.sh)";
  }
  return null;
}

/** Polls `probe` until it returns a value (not undefined); throws after `timeoutMs`. */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 120_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** query-migrate's answer, the fields the tests read. */
export interface QemuMigrateInfo {
  status?: string;
  "error-desc"?: string;
  "socket-address"?: { port?: string }[];
}

/** One QEMU: `-machine pc -m ram` with the multiboot guest; stopped on dispose. */
export class Qemu implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stderr: Promise<string>;
  readonly #dir: string;
  qmp!: QmpClient;

  private constructor(child: Deno.ChildProcess, dir: string) {
    this.#child = child;
    this.#dir = dir;
    this.#stderr = new Response(child.stderr).text().catch(() => "");
  }

  /**
   * Starts QEMU with the guest (mode `dirty`, 4 MiB/s: its counter of pages written
   * keeps rising while it runs) and `extra` arguments (`-incoming …`, `-S`).
   */
  static async start(ram: string, extra: string[] = []): Promise<Qemu> {
    const dir = await Deno.makeTempDir({ prefix: "ferry-qemu-peer-" });
    const image = patchGuest(
      await assembleGuest(),
      guestParamsFor({ kind: "dirty", bytesPerSecond: 4 << 20 }, parseMiB(ram)),
    );
    await Deno.writeFile(`${dir}/guest.bin`, image);
    const child = new Deno.Command("qemu-system-x86_64", {
      args: [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        ram,
        "-smp",
        "1",
        "-kernel",
        `${dir}/guest.bin`,
        "-chardev",
        `socket,id=qmp,path=${dir}/qmp.sock,server=on,wait=off`,
        "-mon",
        "chardev=qmp,mode=control",
        ...extra,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const q = new Qemu(child, dir);
    q.qmp = await until("QEMU's monitor", async () => {
      try {
        return await QmpClient.connect(`${dir}/qmp.sock`);
      } catch {
        return undefined;
      }
    }, 60_000);
    return q;
  }

  /** A scratch directory removed with this QEMU. */
  get dir(): string {
    return this.#dir;
  }

  /** The guest's status page. */
  async guest(): Promise<GuestStatus> {
    const out = await this.qmp.execute<string>("human-monitor-command", {
      "command-line": STATUS_XP_COMMAND,
    });
    return parseStatus(out);
  }

  /** QEMU's run state (query-status). */
  async status(): Promise<string> {
    return (await this.qmp.execute<{ status: string }>("query-status")).status;
  }

  /** Waits until the guest's counter exceeds `above`; returns it. */
  guestCountAbove(above: number): Promise<number> {
    return until(`the guest's counter to pass ${above}`, async () => {
      const st = await this.guest();
      return st.ready && st.count > above ? st.count : undefined;
    });
  }

  /**
   * Waits until the guest has written `by` more pages than `from`, checking at every
   * look that it runs on from where it was: ready, its counter never below `from`
   * nor going back. A guest that rebooted (device state lost) starts over from 0
   * and fails this.
   */
  async guestCountsOn(from: number, by: number): Promise<number> {
    let last = from;
    return await until(`the guest's counter to pass ${from + by}`, async () => {
      const st = await this.guest();
      if (!st.ready || st.count < last) {
        throw new Error(
          `the guest did not run on: counter ${st.count} (ready ${st.ready}) after ${last}`,
        );
      }
      last = st.count;
      return st.count >= from + by ? st.count : undefined;
    });
  }

  /** Waits for query-migrate to reach completed (throws on failed). */
  migrationDone(): Promise<QemuMigrateInfo> {
    return until("QEMU's migration to end", async () => {
      const info = await this.qmp.execute<QemuMigrateInfo>("query-migrate");
      if (info.status === "failed") {
        throw new Error(`QEMU migration failed: ${info["error-desc"]} ${await this.#stderrNow()}`);
      }
      return info.status === "completed" ? info : undefined;
    });
  }

  /** `migrate-incoming tcp:127.0.0.1:0` on a QEMU started with `-incoming defer`; the port. */
  async listenTcp(): Promise<string> {
    await this.qmp.execute("migrate-incoming", { uri: "tcp:127.0.0.1:0" });
    const info = await this.qmp.execute<QemuMigrateInfo>("query-migrate");
    const port = info["socket-address"]?.find((a) => a.port !== undefined)?.port;
    if (port === undefined) throw new Error(`QEMU reported no port: ${JSON.stringify(info)}`);
    return `tcp:127.0.0.1:${port}`;
  }

  async #stderrNow(): Promise<string> {
    const done = await Promise.race([
      this.#child.status.then(() => true),
      Promise.resolve(false),
    ]);
    return done ? await this.#stderr : "";
  }

  /** Waits for the process to exit (after a failed incoming migration QEMU exits); its stderr. */
  async exited(): Promise<string> {
    await this.#child.status;
    return await this.#stderr;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.qmp?.close();
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await this.#child.status;
    await this.#stderr;
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

function parseMiB(ram: string): number {
  const m = /^(\d+)M$/.exec(ram);
  if (!m) throw new RangeError(`RAM ${ram}: whole MiB, e.g. 32M`);
  return Number(m[1]) << 20;
}

/** Runs QEMU's analyzer with `-x` on `stream` in `dir`: it writes each RAM block as a file there. */
export async function analyzerExtract(stream: string, dir: string): Promise<void> {
  const out = await new Deno.Command("python3", {
    args: [ANALYZER, "-f", stream, "-x"],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`analyze-migration.py failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}
