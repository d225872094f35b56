/**
 * Soak test: randomized, fault-injected migrations between real ferries.
 *
 *   deno task soak -- --runs 200 [--seed 1] [--ram 16M] [--faults flip,cut] [--quiet]
 *
 * Each run picks a transport (tcp or unix), a source workload and a fault — none,
 * a cut at a random byte offset, one flipped bit at a random byte offset, a cut
 * just before the end, a cut when the destination answers, a stall, SIGKILL of
 * either side, or a cancel (`--faults` keeps only the kinds named) — and checks
 * the outcome: a migration that completes has equal RAM digests on both sides,
 * and a cut or stall never lets it complete; one the fault reached fails (or is
 * cancelled) on the source, whose guest runs again with its RAM intact, and fails
 * on the destination, which refuses to start and can be re-armed (or, when the
 * fault fell inside the 8-byte stream header, drops that connection and goes on
 * listening). It prints: completed, failed as expected, guests intact,
 * bytes lost (must be 0) and hangs (must be 0), and exits 1 if any is wrong.
 */
import { parseArgs } from "node:util";
import { FerryClient, FerryProcess } from "../testing/ferry_process.ts";
import { type FaultPlan, FaultProxy } from "../testing/fault_proxy.ts";
import { abInvariantViolation } from "../vm/ab_check.ts";

/** Options of {@link runSoak}. */
export interface SoakOptions {
  runs: number;
  seed: number;
  /** Guest RAM of every ferry (default 16M). */
  ram?: string;
  /** A line per run (default: none). */
  log?: (line: string) => void;
  /** How long a side may take to reach a final state before the run counts as a hang. */
  deadlineMs?: number;
  /** Only these fault kinds (default: all). */
  faults?: readonly string[];
}

/** What a soak found. */
export interface SoakResult {
  runs: number;
  /** Runs whose migration completed on both sides with equal RAM digests. */
  completed: number;
  /** Runs the fault reached that failed (or were cancelled) on both sides as they must. */
  failedAsExpected: number;
  /** Of those: the cut fell inside the switchover commit (source completed, destination failed, no guest running). */
  commitLost: number;
  /** Source guests checked after a fault, and how many were intact (running again, ab invariant). */
  guestsChecked: number;
  guestsIntact: number;
  /** Bytes that differ between source and destination over every completed migration (must be 0). */
  bytesLost: number;
  /** Sides that never reached a final state (must be 0). */
  hangs: number;
  /** Runs whose damaged stream (a flipped bit) the integrity check caught, on both sides. */
  integrityCaught: number;
  /** Runs whose fault fell inside the stream header: the destination dropped the connection. */
  refused: number;
  /** Runs per fault kind. */
  faults: Record<string, number>;
  /** Descriptions of every run that did not behave. */
  problems: string[];
}

type Kind = "tcp" | "unix";
type Fault =
  | "none"
  | "cut"
  | "flip"
  | "cut-before-end"
  | "cut-on-answer"
  | "stall"
  | "kill-destination"
  | "kill-source"
  | "cancel";

/** Source workloads: [name, ferry flags, ab range or 0]. */
const WORKLOADS: readonly [string, string[], number][] = [
  ["idle (random fill)", ["--fill", "random"], 0],
  ["ab:rate=8M,range=4M", ["--workload", "ab:rate=8M,range=4M"], 4 << 20],
  ["random:rate=4M", ["--fill", "pattern", "--workload", "random:rate=4M"], 0],
];

const FAULTS: readonly [Fault, number][] = [
  ["none", 10],
  ["cut", 35],
  ["flip", 35],
  ["cut-before-end", 8],
  ["cut-on-answer", 5],
  ["stall", 10],
  ["kill-destination", 10],
  ["kill-source", 7],
  ["cancel", 15],
];

const UNLIMITED = 100_000_000_000;
/** progress_timeout during the soak: stalls end quickly, and any lost wake-up fails fast. */
const SOAK_PROGRESS_TIMEOUT = 1500;
const FINAL = new Set(["completed", "failed", "cancelled"]);

/** xorshift32: a small seeded PRNG so a seed always gives the same schedule. */
function prng(seed: number): () => number {
  let x = (seed >>> 0) || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

function pickWeighted<T>(rand: () => number, items: readonly [T, number][]): T {
  const total = items.reduce((n, [, w]) => n + w, 0);
  let r = rand() * total;
  for (const [item, w] of items) {
    if ((r -= w) < 0) return item;
  }
  return items[items.length - 1][0];
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// deno-lint-ignore no-explicit-any
type Json = any;

/** Polls `path` until `done`; resolves null after `deadlineMs` (a hang). */
async function waitUntil(
  f: FerryClient,
  path: string,
  done: (b: Json) => boolean,
  deadlineMs: number,
): Promise<Json | null> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    let body: Json;
    try {
      body = (await f.api("GET", path)).body;
    } catch {
      return null; // the process is gone
    }
    if (done(body)) return body;
    if (Date.now() > deadline) return null;
    await sleep(15);
  }
}

/** Number of differing bytes between the RAM of two ferries (read in 16 MiB requests). */
async function differingBytes(a: FerryClient, b: FerryClient, size: number): Promise<number> {
  let diff = 0;
  const chunk = 16 << 20;
  for (let off = 0; off < size; off += chunk) {
    const len = Math.min(chunk, size - off);
    const [x, y] = await Promise.all([a, b].map(async (f) => {
      const res = await f.fetch(`/vm/ram?offset=${off}&length=${len}`);
      return new Uint8Array(await res.arrayBuffer());
    }));
    for (let i = 0; i < len; i++) if (x[i] !== y[i]) diff++;
  }
  return diff;
}

/** Parses "16M"-style sizes (binary units). */
function bytesOf(size: string): number {
  const m = /^(\d+)([KMG]?)$/i.exec(size);
  if (!m) throw new Error(`bad size ${size}`);
  return Number(m[1]) * ({ "": 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 } as Record<string, number>)[
    m[2].toUpperCase()
  ];
}

/** The ferries of a soak: one source per workload, one destination per transport. */
class Pool {
  readonly sources = new Map<number, FerryProcess>();
  readonly destinations = new Map<Kind, FerryProcess>();
  readonly #dir: string;
  #n = 0;

  constructor(readonly ram: string, dir: string) {
    this.#dir = dir;
  }

  /** A fresh listen URI for `kind`. */
  uri(kind: Kind, what = "in"): string {
    return kind === "tcp" ? "tcp:127.0.0.1:0" : `unix:${this.#dir}/${what}-${++this.#n}.sock`;
  }

  async source(w: number): Promise<FerryProcess> {
    let f = this.sources.get(w);
    if (!f) {
      f = await FerryProcess.start(["--ram", this.ram, ...WORKLOADS[w][1]]);
      // Faults must fail here: resuming them is tests/engine/resume_test.ts's part.
      await f.api("PATCH", "/migrations/parameters", {
        progress_timeout: SOAK_PROGRESS_TIMEOUT,
        resume_grace: 0,
      });
      this.sources.set(w, f);
    }
    return f;
  }

  async destination(kind: Kind): Promise<FerryProcess> {
    let f = this.destinations.get(kind);
    if (!f) {
      f = await FerryProcess.start(["--ram", this.ram, "--paused", "--no-autostart"]);
      // Faults must fail here: resuming them is tests/engine/resume_test.ts's part.
      await f.api("PATCH", "/migrations/parameters", {
        progress_timeout: SOAK_PROGRESS_TIMEOUT,
        resume_grace: 0,
      });
      this.destinations.set(kind, f);
    }
    return f;
  }

  async drop(f: FerryProcess): Promise<void> {
    for (const [k, v] of this.sources) if (v === f) this.sources.delete(k);
    for (const [k, v] of this.destinations) if (v === f) this.destinations.delete(k);
    await f.kill("SIGKILL");
  }

  async close(): Promise<void> {
    const all = [...this.sources.values(), ...this.destinations.values()];
    this.sources.clear();
    this.destinations.clear();
    await Promise.all(all.map((f) => f.kill("SIGKILL")));
  }
}

/** Runs `runs` randomized fault-injected migrations; never throws for a misbehaving run (it counts it). */
export async function runSoak(opts: SoakOptions): Promise<SoakResult> {
  const ram = opts.ram ?? "16M";
  const ramBytes = bytesOf(ram);
  const deadline = opts.deadlineMs ?? 30_000;
  const log = opts.log ?? (() => {});
  const rand = prng(opts.seed);
  const faults = opts.faults ? FAULTS.filter(([f]) => opts.faults!.includes(f)) : FAULTS;
  if (faults.length === 0) throw new Error(`no such fault kinds: ${opts.faults}`);
  const dir = await Deno.makeTempDir({ prefix: "ferry-soak-" });
  const pool = new Pool(ram, dir);
  const result: SoakResult = {
    runs: 0,
    completed: 0,
    failedAsExpected: 0,
    commitLost: 0,
    guestsChecked: 0,
    guestsIntact: 0,
    bytesLost: 0,
    hangs: 0,
    integrityCaught: 0,
    refused: 0,
    faults: {},
    problems: [],
  };
  /** Stream bytes of the last completed migration per workload: where cuts are aimed. */
  const streamBytes = new Map<number, number>();
  try {
    for (let run = 1; run <= opts.runs; run++) {
      // Every random choice is drawn up front, so a seed fixes the whole schedule.
      const kind: Kind = rand() < 0.5 ? "tcp" : "unix";
      const w = Math.floor(rand() * WORKLOADS.length);
      const fault = pickWeighted(rand, faults);
      const where = rand();
      const limited = rand() < 0.5;
      result.faults[fault] = (result.faults[fault] ?? 0) + 1;
      result.runs++;
      const line = await oneRun(
        pool,
        { run, kind, w, fault, where, limited, ramBytes, deadline, streamBytes },
        result,
      ).catch((e) => {
        result.problems.push(`run ${run}: harness error: ${e instanceof Error ? e.message : e}`);
        return `harness error ${e}`;
      });
      log(`run ${run}: ${kind} ${WORKLOADS[w][0]} ${fault} → ${line}`);
    }
  } finally {
    await pool.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return result;
}

interface RunPlan {
  run: number;
  kind: Kind;
  w: number;
  fault: Fault;
  where: number;
  limited: boolean;
  ramBytes: number;
  deadline: number;
  streamBytes: Map<number, number>;
}

async function oneRun(pool: Pool, p: RunPlan, r: SoakResult): Promise<string> {
  const [src, dst] = await Promise.all([pool.source(p.w), pool.destination(p.kind)]);
  const abRange = WORKLOADS[p.w][2];
  const problem = (what: string) => {
    r.problems.push(`run ${p.run} (${p.kind}, ${WORKLOADS[p.w][0]}, ${p.fault}): ${what}`);
    return `PROBLEM: ${what}`;
  };

  // Arm the destination and put the proxy in front of it.
  const armed = await dst.api("POST", "/migrations/incoming", { uri: pool.uri(p.kind) });
  if (armed.status !== 202) return problem(`arming answered ${JSON.stringify(armed.body)}`);
  const estimate = p.streamBytes.get(p.w) ?? p.ramBytes;
  const plan: FaultPlan = {};
  switch (p.fault) {
    case "cut":
      plan.cutAt = Math.floor(p.where * estimate * 1.05); // some land past the end: no fault
      break;
    case "flip":
      plan.flipAt = Math.floor(p.where * estimate * 1.05);
      plan.flipMask = 1 << Math.floor((p.where * 1e6) % 8);
      break;
    case "cut-before-end":
      plan.cutBeforeEnd = 1 + Math.floor(p.where * 8192);
      break;
    case "cut-on-answer":
      plan.cutOnReturn = true;
      break;
    case "stall":
      plan.stallAt = Math.floor(p.where * estimate * 0.9);
      break;
  }
  const proxy = FaultProxy.start(armed.body.address, plan, pool.uri(p.kind, "proxy"));
  try {
    const wasRunning = (await src.api("GET", "/vm")).body.run_state === "running";
    const slow = p.limited || p.fault === "kill-destination" || p.fault === "kill-source" ||
      p.fault === "cancel";
    await src.api("PATCH", "/migrations/parameters", {
      max_bandwidth: slow ? 40_000_000 : UNLIMITED,
      downtime_limit: 300,
    });
    const started = await src.api("POST", "/migrations", { uri: proxy.address });
    if (started.status !== 202) return problem(`POST /migrations: ${JSON.stringify(started.body)}`);

    // Faults driven from here: kills and cancels at a random point of the stream.
    let killed: "source" | "destination" | null = null;
    let cancelAnswer = 0;
    if (p.fault === "kill-destination" || p.fault === "kill-source" || p.fault === "cancel") {
      const at = Math.floor(p.where * estimate * 0.8);
      const now = await waitUntil(
        src,
        "/migrations/current",
        (b) => FINAL.has(b.status) || (b.ram?.transferred ?? 0) >= at,
        p.deadline,
      );
      if (p.fault === "cancel") {
        cancelAnswer = (await src.api("DELETE", "/migrations/current")).status;
      } else if (now && !FINAL.has(now.status)) {
        killed = p.fault === "kill-source" ? "source" : "destination";
        await pool.drop(killed === "source" ? src : dst);
      }
    }

    // Both sides must reach a final state.
    const s = killed === "source"
      ? null
      : await waitUntil(src, "/migrations/current", (b) => FINAL.has(b.status), p.deadline);
    const d = killed === "destination" ? null : await waitUntil(
      dst,
      "/migrations/incoming",
      (b) =>
        (b.status !== "active" && b.status !== "listening") ||
        (b.status === "listening" && (b.refused_peers ?? 0) > 0 && s !== null &&
          FINAL.has(s.status)),
      p.deadline,
    );
    if (killed !== "source" && !s) {
      r.hangs++;
      await pool.drop(src);
      await pool.drop(dst);
      return problem("the source never reached a final state (hang)");
    }
    if (killed !== "destination" && !d) {
      r.hangs++;
      await pool.drop(src);
      await pool.drop(dst);
      return problem("the destination never reached a final state (hang)");
    }

    // The fault fell inside the stream header: the destination dropped the
    // connection and still listens for the real source.
    if (d?.status === "listening") {
      if (s?.status !== "failed") {
        return problem(`source ${s?.status} while the destination listens`);
      }
      await dst.api("DELETE", "/migrations/incoming");
      r.refused++;
      r.failedAsExpected++;
      if (wasRunning) {
        const vm = (await src.api("GET", "/vm")).body;
        if (vm.run_state !== "running") return problem(`source guest is ${vm.run_state}`);
      }
      return `failed / connection refused: ${s.error_desc}`.slice(0, 160);
    }

    // Both completed: the fault did not reach the stream (or came too late). Compare RAM.
    if (s?.status === "completed" && d?.status === "completed") {
      const a = (await src.api("GET", "/vm/ram/digest")).body;
      const b = (await dst.api("GET", "/vm/ram/digest")).body;
      p.streamBytes.set(p.w, s.ram.transferred);
      if (a.sha256 !== b.sha256) {
        const lost = await differingBytes(src, dst, p.ramBytes);
        r.bytesLost += lost;
        return problem(`completed but ${lost} bytes differ`);
      }
      if (proxy.wasCut || proxy.wasStalled) return problem("completed although the stream was cut");
      r.completed++;
      await src.api("POST", "/vm/start"); // the source keeps going for the next run
      return `completed (${s.ram.transferred} bytes, digests equal)`;
    }

    // The cut fell inside the 5-byte commit: source completed, destination failed.
    if (s?.status === "completed") {
      if (d?.status !== "failed") return problem(`source completed, destination ${d?.status}`);
      const vm = (await src.api("GET", "/vm")).body;
      if (vm.run_state !== "postmigrate") return problem(`source guest ${vm.run_state}`);
      const start = await dst.api("POST", "/vm/start");
      if (start.status !== 409) return problem(`the destination started a partial guest`);
      r.failedAsExpected++;
      r.commitLost++;
      await src.api("POST", "/vm/start"); // what an operator does: resume the source
      return "commit lost: source completed, destination failed, no guest running";
    }

    // Failed or cancelled: only a fault may cause that.
    const faulted = proxy.wasCut || proxy.wasStalled || proxy.flipped || killed !== null ||
      (p.fault === "cancel" && cancelAnswer === 202);
    if (!faulted) {
      return problem(`failed without a fault: ${s?.error_desc ?? d?.error_desc ?? "?"}`);
    }
    // Check the source guest and the destination.
    if (s) {
      if (!s.error_desc && s.status === "failed") return problem("source failed without a reason");
      if (p.fault === "cancel" && s.status === "cancelled" && cancelAnswer !== 202) {
        return problem(`cancel answered ${cancelAnswer}`);
      }
      r.guestsChecked++;
      const vm = (await src.api("GET", "/vm")).body;
      if (wasRunning && vm.run_state !== "running") {
        return problem(`source guest is ${vm.run_state} after ${s.status}`);
      }
      if (abRange > 0) {
        await src.api("POST", "/vm/stop");
        const res = await src.fetch(`/vm/ram?offset=0&length=${abRange}`);
        const bytes = new Uint8Array(await res.arrayBuffer());
        await src.api("POST", "/vm/start");
        const violation = abInvariantViolation(bytes, abRange / 4096);
        if (violation) return problem(`ab invariant broken on the source: ${violation}`);
      }
      r.guestsIntact++;
    }
    if (d) {
      if (d.status !== "failed") return problem(`destination ${d.status} after a failed migration`);
      const start = await dst.api("POST", "/vm/start");
      if (start.status !== 409) return problem("the destination started a partial guest");
    }
    r.failedAsExpected++;
    if (p.fault === "flip" && /Integrity check failed/.test(d?.error_desc ?? "")) {
      if (!s?.error_desc?.includes(d!.error_desc)) {
        return problem(`the source does not report the destination's reason: ${s?.error_desc}`);
      }
      r.integrityCaught++;
    }
    return `${s?.status ?? "killed"} / ${d?.status ?? "killed"}: ${
      s?.error_desc ?? d?.error_desc ?? ""
    }`.slice(0, 160);
  } finally {
    await proxy.close();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
    options: {
      runs: { type: "string", default: "200" },
      seed: { type: "string", default: String(Date.now() % 100000) },
      ram: { type: "string", default: "16M" },
      faults: { type: "string" },
      quiet: { type: "boolean", default: false },
    },
  });
  const runs = Number(values.runs);
  const seed = Number(values.seed);
  console.log(`soak: ${runs} runs, seed ${seed}, ${values.ram} guests`);
  const t0 = performance.now();
  const r = await runSoak({
    runs,
    seed,
    ram: values.ram,
    ...(values.faults ? { faults: values.faults.split(",") } : {}),
    log: values.quiet ? undefined : (l) => console.log(l),
  });
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`
soak finished in ${s} s (seed ${seed})
  runs                 ${r.runs}
  completed            ${r.completed}   (both sides completed, RAM digests equal)
  failed as expected   ${r.failedAsExpected}   (of which ${r.commitLost} lost only the commit)
  guests intact        ${r.guestsIntact} of ${r.guestsChecked} checked after a fault
  bytes lost           ${r.bytesLost}
  hangs                ${r.hangs}
  integrity caught     ${r.integrityCaught}   (flips whose damage both sides reported by name)
  refused at header    ${r.refused}   (faults inside the 8-byte header: connection dropped)
  faults               ${JSON.stringify(r.faults)}`);
  for (const p of r.problems) console.log(`  PROBLEM ${p}`);
  const ok = r.bytesLost === 0 && r.hangs === 0 && r.problems.length === 0 &&
    r.completed + r.failedAsExpected === r.runs;
  Deno.exit(ok ? 0 : 1);
}
