/**
 * `deno task bench:x86`: the x86 guest (Linux under v86, `--guest x86`) between
 * real ferry processes over loopback tcp.
 *
 *   deno task bench:x86                          # 256M and 1G, 3 runs each
 *   deno task bench:x86 --runs 1 --sizes 256M    # one quick pass
 *   deno task bench:x86 --json /tmp/x86.json     # also write every sample as JSON
 *
 * For each RAM size and run it boots one source and moves its guest along a chain
 * of destinations, each started with `--no-autostart` and started over the API
 * once its RAM digest was checked against the one it came from:
 *
 * 1. **boot**: process start → the API answering → the first `tick` line on the
 *    console (and the shell's prompt);
 * 2. **idle, 300 ms**: the booted guest, ticking with its shell idle;
 * 3. **idle probe**: the same at a limit just above the final sync's floor
 *    ({@link probeLimitMs}), so that the `downtime-limit-exceeded` warning says
 *    where the downtime of an idle switchover goes;
 * 4. **busy, 300 ms**: a loop rewriting a file in /dev/shm (a quarter of RAM, at
 *    least 64 MiB; bench/x86_helpers.ts busyCommands);
 * 5. **busy, 30 ms, auto-converge**.
 *
 * Every migration runs at unlimited bandwidth. Its wall time runs from the
 * POST /migrations request to the destination's `incoming` event saying
 * `completed` (read from its SSE stream, confirmed with GET /migrations/incoming).
 *
 * Beside the chain: the page compare that keeps the x86 guest's RAM copy exact
 * (vm/x86/page_sync.ts), timed in-process over two memories of the guest's size,
 * since every dirty-log sync, the final one included, reads all of RAM; and the
 * make-up of the real RAM of the first run's idle and busy guests (zero, duplicate
 * and distinct pages, zstd and LZ4 ratios: bench/ram_makeup.ts), whose images are
 * saved under .cache/x86-ram/ with a manifest naming the command that made them.
 * Needs the guest image (`deno task guest:image`).
 * @module
 */
import { createHash } from "node:crypto";
import { parseArgs } from "node:util";
import { followConsole, type FollowedConsole } from "../testing/console_follower.ts";
import { FerryProcess } from "../testing/ferry_process.ts";
import { SseReader } from "../testing/sse_reader.ts";
import { PAGE_SIZE, parseSize, RamBlock } from "../vm/ram.ts";
import { guestImagePresent } from "../vm/x86/guest_image.ts";
import { GUEST_PROMPT } from "../vm/x86/initramfs.ts";
import { pageSync } from "../vm/x86/page_sync.ts";
import { parseTicks } from "../vm/x86/ticks.ts";
import { isCodec, type LoadedCodec, lz4Codec, zstdCodec } from "./codecs.ts";
import {
  gitCommit,
  guard,
  linesAfter,
  mark,
  readRam,
  saveRamImage,
  startX86,
  ticksAfter,
  type,
} from "./x86_session.ts";
import { type CompressionResult, makeUp } from "./ram_makeup.ts";
import { median } from "./stats.ts";
import {
  BREAKDOWN_PARTS,
  breakdownOf,
  busyCommands,
  type DowntimeBreakdown,
  FILLED_LINE,
  PASS_LINE,
  spread,
} from "./x86_helpers.ts";

const UNLIMITED = 100e9;
const MiB = 2 ** 20;
const FINAL = ["completed", "failed", "cancelled"];
/** Hang guard for a boot: v86 boots in seconds to tens of seconds, more on a busy machine. */
const BOOT_GUARD_MS = 600_000;
/** Ticks a guest prints, after its prompt or after being resumed, before it counts as settled. */
const SETTLE_TICKS = 10;
/** Chunk size of the chunked compression figures. */
const CHUNK_BYTES = MiB;

const { values } = parseArgs({
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    runs: { type: "string", default: "3" },
    sizes: { type: "string", default: "256M,1G" },
    "busy-mib": { type: "string" },
    "ac-timeout": { type: "string", default: "90" },
    "ram-dir": { type: "string" },
    "no-save": { type: "boolean", default: false },
    "no-makeup": { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const runs = Math.max(1, Number(values.runs));
const sizes = values.sizes.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
const acTimeoutS = Number(values["ac-timeout"]);
const ramDir = values["ram-dir"] ?? new URL("../.cache/x86-ram", import.meta.url).pathname;
const command = ["deno", "task", "bench:x86", ...Deno.args].join(" ");

/** The busy loop's file for a guest of `ramBytes`: a quarter of RAM, at least 64 MiB. */
function busyMiB(ramBytes: number): number {
  if (values["busy-mib"]) return Number(values["busy-mib"]);
  return Math.max(64, Math.floor(ramBytes / MiB / 4 / 8) * 8);
}

/** One boot of a source. */
interface BootRecord {
  readonly ram: string;
  readonly run: number;
  /** Process start → the API answers (ms). */
  readonly apiMs: number;
  /** Process start → the first tick line reaches this process (ms). */
  readonly firstTickMs: number;
  /** Process start → the shell's prompt (ms). */
  readonly promptMs: number;
}

/** One migration of the chain. */
interface MigrationRecord {
  readonly ram: string;
  readonly scenario: string;
  readonly run: number;
  readonly downtimeLimitMs: number;
  readonly autoConverge: boolean;
  /** The source's final status and the destination's. */
  readonly status: string;
  readonly incomingStatus: string;
  /** POST /migrations → the destination's `completed` event (ms); NaN when it did not complete. */
  readonly wallMs: number;
  readonly totalTimeMs: number;
  readonly downtimeMs: number;
  readonly setupTimeMs: number;
  /** The destination's own total_time (ms). */
  readonly incomingTotalMs: number;
  readonly passes: number;
  readonly transferredBytes: number;
  readonly maxThrottle: number;
  readonly breakdown: DowntimeBreakdown | null;
  readonly warnings: { code: string; message: string }[];
  /** Both ends' RAM digests equal (null when the migration did not complete). */
  readonly ramEqual: boolean | null;
  /** How long the destination took to start (ms). */
  readonly destinationStartMs: number;
  readonly error?: string;
}

/** The page compare timed over two memories of one size. */
interface CompareRecord {
  readonly ramBytes: number;
  /** Every page equal: the final sync of a guest that wrote nothing (ms per sync). */
  readonly equalMs: number[];
  /** Every page differs: each is copied too (ms per sync). */
  readonly differMs: number[];
}

/** The make-up of one saved RAM image. */
interface MakeupRecord {
  readonly ram: string;
  readonly state: "idle" | "busy";
  readonly image: string | null;
  readonly sha256: string;
  readonly pages: number;
  readonly zero: number;
  readonly nonZero: number;
  readonly duplicate: number;
  readonly distinct: number;
  readonly censusMs: number;
  readonly compression: CompressionResult[];
  readonly unavailable: { codec: string; why: string }[];
}

const boots: BootRecord[] = [];
const migrations: MigrationRecord[] = [];
const compares: CompareRecord[] = [];
const makeups: MakeupRecord[] = [];
/** RAM images read in the first run, analysed at the end (with no guest running). */
const images: { ram: string; state: "idle" | "busy"; bytes: Uint8Array; path: string | null }[] =
  [];

const fmt = {
  s: (ms: number) => Number.isNaN(ms) ? "—" : `${(ms / 1000).toFixed(2)}s`,
  ms: (x: number) => Number.isNaN(x) ? "—" : `${x.toFixed(x < 10 ? 1 : 0)}ms`,
  mib: (b: number) => Number.isNaN(b) ? "—" : `${(b / MiB).toFixed(0)}`,
  pct: (part: number, whole: number) => `${(100 * part / whole).toFixed(1)}%`,
};

function row(cells: string[], widths: number[]): string {
  return cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(" ");
}

function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "?";
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---- the page compare, in-process ----

/**
 * Times pageSync over an emulator-like memory (not shared, as v86's) and a shared
 * copy of `ramBytes`, both faulted in: `reps` syncs with every page equal, then
 * `reps` with one byte changed in every page.
 */
function timeCompare(ramBytes: number, reps: number): CompareRecord {
  const pages = ramBytes / PAGE_SIZE;
  const emulator = new WebAssembly.Memory({ initial: ramBytes / 65536 });
  const copy = new RamBlock("pc.ram", ramBytes);
  const words = new Uint32Array(emulator.buffer);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i, 0x9e3779b1);
  const bytes = new Uint8Array(emulator.buffer);
  copy.bytes.set(bytes);
  const sync = pageSync(emulator, copy.memory!);
  const run = (expect: number) => {
    const t = performance.now();
    const n = sync.diffCopy(0, 0, pages, () => {});
    const ms = performance.now() - t;
    if (n !== expect) throw new Error(`page compare found ${n} changed pages, expected ${expect}`);
    return ms;
  };
  run(0); // compiles and warms the kernel
  const equalMs = Array.from({ length: reps }, () => run(0));
  const differMs = Array.from({ length: reps }, () => {
    for (let p = 0; p < pages; p++) bytes[p * PAGE_SIZE + 100] ^= 1;
    return run(pages);
  });
  return { ramBytes, equalMs, differMs };
}

/**
 * The downtime limit of the idle probe for a guest of `ramBytes`: half again the
 * in-process compare time of all of RAM, plus 10 ms. A limit below the final
 * sync's cost leaves no budget for pages at all (a running Linux guest always
 * dirties a few), so the migration would never converge; one just above it
 * converges at once, and the fixed costs around the sync (device state, the
 * destination's load) take the downtime over it, so the warning gives the
 * breakdown.
 */
function probeLimitMs(ramBytes: number): number {
  const measured = compares.find((c) => c.ramBytes === ramBytes);
  return Math.ceil(1.5 * median(measured!.equalMs) + 10);
}

// ---- ferries and their consoles ----

/** A destination and how long it took to start. */
async function startDestination(ram: string): Promise<{ ferry: FerryProcess; startMs: number }> {
  const t = performance.now();
  const ferry = await startX86(ram, ["--incoming", "tcp:127.0.0.1:0", "--no-autostart"]);
  if (!ferry.incoming) {
    await ferry.kill("SIGKILL");
    throw new Error(`destination printed no incoming address: ${ferry.output()}`);
  }
  return { ferry, startMs: performance.now() - t };
}

/** Resumes a loaded destination's guest and follows its console until it ticks on. */
async function resume(ferry: FerryProcess): Promise<FollowedConsole> {
  const res = await ferry.api("POST", "/vm/start");
  if (res.status !== 200) {
    throw new Error(`POST /vm/start: ${res.status} ${JSON.stringify(res.body)}`);
  }
  const con = await followConsole(ferry);
  const from = await mark(ferry, con);
  await ticksAfter(con, from, 2);
  return con;
}

// ---- one migration ----

interface MigrateOptions {
  readonly scenario: string;
  readonly ram: string;
  readonly run: number;
  readonly downtimeLimitMs: number;
  readonly autoConverge: boolean;
  readonly timeoutS: number;
  readonly destinationStartMs: number;
}

/** Waits for the destination's `incoming` event that ends its migration. */
async function incomingEnd(
  events: SseReader,
): Promise<{ status: string; at: number } | null> {
  for (;;) {
    const frame = await events.next().catch(() => null);
    if (frame === null) return null;
    if (frame.event !== "incoming" || frame.data === undefined) continue;
    const to = (JSON.parse(frame.data) as { to: string }).to;
    if (FINAL.includes(to)) return { status: to, at: performance.now() };
  }
}

/** Migrates `src` → `dst` as `o` says and checks both ends' RAM. */
async function migrate(
  src: FerryProcess,
  dst: FerryProcess,
  o: MigrateOptions,
): Promise<MigrationRecord> {
  await src.api("PUT", "/migrations/capabilities", { auto_converge: o.autoConverge });
  const params = await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: UNLIMITED,
    downtime_limit: o.downtimeLimitMs,
  });
  if (params.status !== 200) throw new Error(`PATCH parameters: ${JSON.stringify(params.body)}`);
  const res = await dst.fetch("/migrations/events");
  if (res.status !== 200 || !res.body) throw new Error(`GET /migrations/events: ${res.status}`);
  const events = new SseReader(res.body);
  const ended = incomingEnd(events);
  let maxThrottle = 0;
  let end: { status: string; at: number } | null = null;
  const t0 = performance.now();
  try {
    const started = await src.api("POST", "/migrations", { uri: dst.incoming });
    if (started.status !== 202) {
      throw new Error(`POST /migrations: ${started.status} ${JSON.stringify(started.body)}`);
    }
    const deadline = t0 + o.timeoutS * 1000;
    let cancelled = false;
    for (;;) {
      end = await Promise.race([ended, sleep(250).then(() => undefined)]) ?? null;
      if (end !== null) break;
      const info = (await src.api("GET", "/migrations/current")).body;
      maxThrottle = Math.max(maxThrottle, info.cpu_throttle_percentage ?? 0);
      if (!cancelled && performance.now() > deadline) {
        cancelled = true;
        await src.api("DELETE", "/migrations/current");
      }
      if (performance.now() > deadline + 60_000) throw new Error("the destination never ended");
    }
  } finally {
    await events.cancel().catch(() => {});
    await ended;
  }
  const info = await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status), 60_000);
  const incoming = (await dst.api("GET", "/migrations/incoming")).body;
  let ramEqual: boolean | null = null;
  if (info.status === "completed" && incoming.status === "completed") {
    const [a, b] = await Promise.all([
      src.api("GET", "/vm/ram/digest"),
      dst.api("GET", "/vm/ram/digest"),
    ]);
    ramEqual = a.body.sha256 === b.body.sha256;
  }
  const completed = end?.status === "completed" && incoming.status === "completed";
  return {
    ram: o.ram,
    scenario: o.scenario,
    run: o.run,
    downtimeLimitMs: o.downtimeLimitMs,
    autoConverge: o.autoConverge,
    status: info.status,
    incomingStatus: incoming.status,
    wallMs: completed ? end!.at - t0 : NaN,
    totalTimeMs: info.total_time ?? NaN,
    downtimeMs: info.downtime ?? NaN,
    setupTimeMs: info.setup_time ?? NaN,
    incomingTotalMs: incoming.total_time ?? NaN,
    passes: info.ram?.dirty_sync_count ?? NaN,
    transferredBytes: info.ram?.transferred ?? NaN,
    maxThrottle,
    breakdown: breakdownOf(info.warnings),
    warnings: info.warnings ?? [],
    ramEqual,
    destinationStartMs: o.destinationStartMs,
    ...(info.error_desc ? { error: info.error_desc } : {}),
  };
}

// ---- RAM images ----

/** Keeps an image for the make-up section, and saves it with its manifest unless --no-save. */
async function keepImage(
  ram: string,
  state: "idle" | "busy",
  bytes: Uint8Array,
  about: string,
): Promise<void> {
  const path = values["no-save"]
    ? null
    : await saveRamImage(`${ramDir}/x86-${ram}-${state}.ram`, bytes, about, command);
  images.push({ ram, state, bytes, path });
}

// ---- one chain: boot, idle, probe, busy, busy at 30 ms ----

async function chain(ram: string, run: number, keepImages: boolean): Promise<void> {
  const ramBytes = parseSize(ram);
  const fileMiB = busyMiB(ramBytes);
  const open: (FerryProcess | FollowedConsole)[] = [];
  const kill = async (x: FerryProcess | FollowedConsole) => {
    const at = open.indexOf(x);
    if (at >= 0) open.splice(at, 1);
    if (x instanceof FerryProcess) await x.kill("SIGKILL");
    else await x.close();
  };
  const keep = <T extends FerryProcess | FollowedConsole>(x: T): T => (open.push(x), x);
  const step = (what: string) => console.error(`  ${ram} run ${run + 1}: ${what}`);
  try {
    step("booting the source");
    const t0 = performance.now();
    let src = keep(await startX86(ram));
    const apiMs = performance.now() - t0;
    let con = keep(await followConsole(src));
    await guard(con.log.waitFor((t) => parseTicks(t).length >= 1), BOOT_GUARD_MS, "first tick");
    const firstTickMs = performance.now() - t0;
    const promptAt = await guard(
      con.log.waitFor((t) => {
        const at = t.indexOf(GUEST_PROMPT);
        return at >= 0 ? at : false;
      }),
      BOOT_GUARD_MS,
      "shell prompt",
    );
    const promptMs = performance.now() - t0;
    boots.push({ ram, run, apiMs, firstTickMs, promptMs });
    await ticksAfter(con, promptAt, SETTLE_TICKS);
    await kill(con);

    /**
     * Migrates the current source to a new destination. Once it completed, the
     * source's RAM may be kept as an image, the source goes, and the destination's
     * guest is resumed as the next source; otherwise the source runs on.
     */
    const hop = async (
      scenario: string,
      downtimeLimitMs: number,
      autoConverge: boolean,
      timeoutS: number,
      image?: { state: "idle" | "busy"; about: string },
    ): Promise<FollowedConsole> => {
      step(`${scenario}: starting a destination`);
      const { ferry: dst, startMs } = await startDestination(ram);
      keep(dst);
      step(`${scenario}: migrating`);
      const rec = await migrate(src, dst, {
        scenario,
        ram,
        run,
        downtimeLimitMs,
        autoConverge,
        timeoutS,
        destinationStartMs: startMs,
      });
      migrations.push(rec);
      step(
        `${scenario}: ${rec.status}, wall ${fmt.ms(rec.wallMs)}, downtime ${
          fmt.ms(rec.downtimeMs)
        }, passes ${rec.passes}, RAM equal ${rec.ramEqual}`,
      );
      if (rec.status !== "completed" || rec.incomingStatus !== "completed") {
        await kill(dst);
        return keep(await followConsole(src));
      }
      if (image && keepImages) {
        await keepImage(ram, image.state, await readRam(src, ramBytes), image.about);
      }
      await kill(src);
      src = dst;
      return keep(await resume(src));
    };

    // The booted, idle guest at 300 ms.
    con = await hop("idle 300ms", 300, false, 120, {
      state: "idle",
      about: "booted, ticking, shell idle; stopped at the switchover of an idle migration",
    });

    // The same guest at a limit just above the final sync's floor: the downtime
    // exceeds it, and the warning says where the downtime went.
    await ticksAfter(con, await mark(src, con), SETTLE_TICKS);
    await kill(con);
    const probe = probeLimitMs(ramBytes);
    con = await hop(`idle ${probe}ms (probe)`, probe, false, 60);

    // Busy: the /dev/shm loop, two passes in before migrating.
    const [fill, loop] = busyCommands(fileMiB);
    let from = await mark(src, con);
    await type(src, fill);
    await linesAfter(con, from, FILLED_LINE, 1);
    from = await mark(src, con);
    await type(src, loop);
    await linesAfter(con, from, PASS_LINE, 2);
    await kill(con);
    con = await hop(`busy ${fileMiB}M 300ms`, 300, false, 120, {
      state: "busy",
      about: `rewriting ${fileMiB} MiB of /dev/shm in a loop (bench/x86_helpers.ts ` +
        "busyCommands); stopped at the switchover of a migration",
    });

    // Busy again at 30 ms with auto-converge, once the loop runs on.
    await linesAfter(con, await mark(src, con), PASS_LINE, 1);
    await kill(con);
    await hop(`busy ${fileMiB}M 30ms AC`, 30, true, acTimeoutS);
  } finally {
    for (const x of [...open].reverse()) await kill(x);
  }
}

// ---- the run ----

if (!guestImagePresent()) {
  console.error("bench:x86 needs the guest image: run deno task guest:image first");
  Deno.exit(2);
}
const loadBefore = loadAverage();
console.log(`ferry x86 guest benchmark (${new Date().toISOString()})`);
console.log(
  `machine: ${navigator.hardwareConcurrency} cores, ${
    (Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0)
  } GiB, Deno ${Deno.version.deno}; load average at start ${loadBefore}`,
);
console.log(`command: ${command}`);

{
  console.log(`\n# Page compare (vm/x86/page_sync.wat), in-process, median (range) of 5`);
  const w = [6, 26, 26];
  console.log(row(["ram", "all pages equal", "every page differs"], w));
  for (const ram of sizes) {
    const r = timeCompare(parseSize(ram), 5);
    compares.push(r);
    const gbps = (ms: number) => `${(r.ramBytes / ms / 1e6).toFixed(1)} GB/s`;
    console.log(row([
      ram,
      `${spread(r.equalMs, fmt.ms)} ${gbps(median(r.equalMs))}`,
      `${spread(r.differMs, fmt.ms)} ${gbps(median(r.differMs))}`,
    ], w));
  }
  console.log(
    "Each dirty-log sync of the x86 guest compares all of its RAM with the copy the migration " +
      "sends from; the final one runs with the guest stopped, so 'all pages equal' is the floor " +
      "of its downtime.",
  );
}

console.error(`\nrunning ${runs} chain(s) per size: ${sizes.join(", ")}`);
let failures = 0;
for (const ram of sizes) {
  for (let run = 0; run < runs; run++) {
    try {
      await chain(ram, run, run === 0 && !values["no-makeup"]);
    } catch (e) {
      failures++;
      console.error(`  ${ram} run ${run + 1} failed: ${(e as Error).stack ?? e}`);
    }
  }
}

console.log(`\n# Boot to the first tick (--guest x86), median (range) of ${runs}`);
{
  const w = [6, 20, 22, 22, 22];
  console.log(
    row(["ram", "API answers", "first tick", "tick after API", "shell prompt"], w),
  );
  for (const ram of sizes) {
    const b = boots.filter((x) => x.ram === ram);
    console.log(row([
      ram,
      spread(b.map((x) => x.apiMs), fmt.s),
      spread(b.map((x) => x.firstTickMs), fmt.s),
      spread(b.map((x) => x.firstTickMs - x.apiMs), fmt.s),
      spread(b.map((x) => x.promptMs), fmt.s),
    ], w));
  }
  console.log("Times from process start; the guest boots while the ferry starts its API.");
}

console.log(
  `\n# Migration over loopback tcp, unlimited bandwidth, median (range) of ${runs}`,
);
{
  const w = [5, 21, 5, 24, 24, 22, 8, 7, 9, 6, 5];
  console.log(row([
    "ram",
    "scenario",
    "done",
    "wall (POST → completed)",
    "total_time",
    "downtime",
    "≤limit",
    "passes",
    "MiB sent",
    "thrt%",
    "RAM=",
  ], w));
  const scenarios = [...new Set(migrations.map((m) => `${m.ram}\t${m.scenario}`))];
  for (const key of scenarios) {
    const [ram, scenario] = key.split("\t");
    const ms = migrations.filter((m) => m.ram === ram && m.scenario === scenario);
    const done = ms.filter((m) => m.status === "completed" && m.incomingStatus === "completed");
    const within = done.filter((m) => m.downtimeMs <= m.downtimeLimitMs).length;
    console.log(row([
      ram,
      scenario,
      `${done.length}/${ms.length}`,
      spread(done.map((m) => m.wallMs), fmt.ms),
      spread(done.map((m) => m.totalTimeMs), fmt.ms),
      spread(done.map((m) => m.downtimeMs), fmt.ms),
      `${within}/${ms.length}`,
      spread(ms.map((m) => m.passes), String),
      fmt.mib(median(done.map((m) => m.transferredBytes))),
      ms.some((m) => m.autoConverge) ? `${Math.max(...ms.map((m) => m.maxThrottle))}` : "—",
      done.every((m) => m.ramEqual === true) ? "yes" : "NO",
    ], w));
  }
  console.log(
    "wall = POST /migrations → the destination's incoming event 'completed'; total_time and " +
      "downtime are the source's; RAM= both ends' digests equal after every run.",
  );

  const withBreakdown = migrations.filter((m) => m.breakdown !== null);
  if (withBreakdown.length > 0) {
    console.log(
      "\n# Where the downtime went (downtime-limit-exceeded warnings), median ms (range)",
    );
    const wb = [5, 21, 6, 15, 18, 15, 15, 15, 17];
    console.log(row([
      "ram",
      "scenario",
      "runs",
      "downtime",
      "stop",
      "final sync",
      "last pages",
      "device state",
      "end + destination",
    ], wb));
    const keys = [...new Set(withBreakdown.map((m) => `${m.ram}\t${m.scenario}`))];
    for (const key of keys) {
      const [ram, scenario] = key.split("\t");
      const ms = withBreakdown.filter((m) => m.ram === ram && m.scenario === scenario);
      console.log(row([
        ram,
        scenario,
        `${ms.length}`,
        spread(ms.map((m) => m.downtimeMs), String),
        ...BREAKDOWN_PARTS.map((p) => spread(ms.map((m) => m.breakdown![p]), String)),
      ], wb));
    }
  }
}

if (images.length > 0) {
  const codecs: LoadedCodec[] = [zstdCodec(1), await lz4Codec()];
  for (const img of images) {
    console.error(`  analysing the ${img.ram} ${img.state} image`);
    const { census, censusMs, compression } = makeUp(
      img.bytes,
      codecs.filter(isCodec),
      [PAGE_SIZE, CHUNK_BYTES],
    );
    makeups.push({
      ram: img.ram,
      state: img.state,
      image: img.path,
      sha256: createHash("sha256").update(img.bytes).digest("hex"),
      pages: census.pages,
      zero: census.zero,
      nonZero: census.nonZero,
      duplicate: census.duplicate,
      distinct: census.distinct,
      censusMs,
      compression,
      unavailable: codecs.flatMap((c) => isCodec(c) ? [] : [{ codec: c.name, why: c.unavailable }]),
    });
  }
  console.log("\n# RAM make-up of the x86 guest (first run; 4 KiB pages)");
  const w = [5, 5, 8, 15, 15, 15, 15];
  console.log(row(["ram", "state", "pages", "zero", "non-zero", "duplicate¹", "distinct¹"], w));
  for (const m of makeups) {
    console.log(row([
      m.ram,
      m.state,
      `${m.pages}`,
      `${m.zero} ${fmt.pct(m.zero, m.pages)}`,
      `${m.nonZero} ${fmt.pct(m.nonZero, m.pages)}`,
      `${m.duplicate} ${fmt.pct(m.duplicate, m.pages)}`,
      `${m.distinct} ${fmt.pct(m.distinct, m.pages)}`,
    ], w));
  }
  console.log(
    "¹ among the non-zero pages: duplicate = a page whose bytes equal an earlier page's; " +
      "distinct = different contents (non-zero = duplicate + distinct).",
  );
  console.log("\n# Compression of the non-zero pages (single thread, in this process)");
  const wc = [5, 5, 8, 6, 8, 8, 15, 8];
  console.log(
    row(["ram", "state", "codec", "unit", "ratio", "MiB out", "incompressible", "MB/s"], wc),
  );
  for (const m of makeups) {
    for (const c of m.compression) {
      console.log(row([
        m.ram,
        m.state,
        c.codec,
        c.unitBytes === PAGE_SIZE ? "4K" : `${c.unitBytes / MiB}M`,
        `${c.ratio.toFixed(2)}x`,
        (c.sentBytes / MiB).toFixed(1),
        `${c.incompressible}/${c.units}`,
        (c.rawBytes / c.compressMs / 1e3).toFixed(0),
      ], wc));
    }
    for (const u of m.unavailable) {
      console.log(`${m.ram} ${m.state}: ${u.codec} unavailable: ${u.why}`);
    }
  }
  console.log(
    "ratio = raw bytes ÷ bytes sent, an incompressible unit sent raw; unit 1M = the non-zero " +
      "pages laid end to end in address order, compressed 1 MiB at a time; zstd -1 via node:zlib, " +
      "lz4 via lz4-wasm-nodejs (raw block size).",
  );
  const saved = images.filter((i) => i.path !== null);
  if (saved.length > 0) {
    console.log(`RAM images (with a .json manifest each): ${saved.map((i) => i.path).join(", ")}`);
  }
}

const loadAfter = loadAverage();
console.log(`\nload average at start ${loadBefore}, at end ${loadAfter}`);
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        command,
        cores: navigator.hardwareConcurrency,
        deno: Deno.version.deno,
        load_average: { start: loadBefore, end: loadAfter },
        ferry_commit: await gitCommit(),
        compares,
        boots,
        migrations,
        makeups,
      },
      null,
      1,
    ) + "\n",
  );
}
const unequal = migrations.filter((m) => m.ramEqual === false).length;
if (failures > 0 || unequal > 0) {
  console.error(`${failures} chain(s) failed, ${unequal} migration(s) with unequal RAM`);
  Deno.exit(1);
}
