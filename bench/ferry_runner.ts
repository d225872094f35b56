/**
 * Runs one benchmark scenario ({@link ScenarioSpec}) between two real ferry
 * processes on this host and reports it as a {@link MigrationRun}, the same shape
 * the QEMU side (`bench/qemu/mod.ts`) fills, so the suite can print ratios.
 */
import { FerryProcess } from "../testing/ferry_process.ts";
import { SseReader } from "../testing/sse_reader.ts";
import type { MigrationRun, ScenarioSpec } from "./qemu/types.ts";
import { peakRss } from "./stats.ts";

/** A ferry run plus what only ferry offers: API latency samples taken during it. */
export interface FerryRun extends MigrationRun {
  /** `GET /migrations/current` round trips (ms) measured while the migration ran. */
  readonly apiLatenciesMs: number[];
}

const FINAL = new Set(["completed", "failed", "cancelled"]);

/** The `--workload`/`--paused` flags that make a ferry guest behave as `spec.workload` says. */
export function workloadArgs(spec: ScenarioSpec): string[] {
  const w = spec.workload;
  switch (w.kind) {
    case "paused":
      return ["--paused"];
    case "idle":
      return ["--workload", "idle"];
    case "dirty":
      // One 8-byte write per op into a random page: `rate` bytes of pages per second.
      return ["--workload", `random:rate=${Math.round(w.bytesPerSecond)},bytes=8`];
    case "ab":
      return ["--workload", `ab:range=${w.rangeBytes}`];
  }
}

/** Polls GET /migrations/current back to back until `ended()`; returns the latencies (ms). */
async function sampleLatency(src: FerryProcess, ended: () => boolean): Promise<number[]> {
  const out: number[] = [];
  while (!ended()) {
    const t = performance.now();
    const res = await src.fetch("/migrations/current");
    await res.arrayBuffer();
    out.push(performance.now() - t);
    await new Promise((r) => setTimeout(r, 2));
  }
  return out;
}

/**
 * `at` resolves with the time (performance.now()) of the destination's
 * `incoming` event that says `completed` (NaN if it ends otherwise); listening
 * starts before this returns.
 */
async function incomingDone(dst: FerryProcess): Promise<{ readonly at: Promise<number> }> {
  const res = await dst.fetch("/migrations/events");
  if (res.status !== 200 || !res.body) throw new Error(`GET /migrations/events: ${res.status}`);
  const events = new SseReader(res.body);
  const at = (async () => {
    try {
      for (;;) {
        const frame = await events.next().catch(() => null);
        if (frame === null) return NaN;
        if (frame.event !== "incoming" || frame.data === undefined) continue;
        const to = (JSON.parse(frame.data) as { to: string }).to;
        if (to === "completed") return performance.now();
        if (FINAL.has(to)) return NaN;
      }
    } finally {
      await events.cancel().catch(() => {});
    }
  })();
  return { at };
}

/** What the note of a completed run says: the throttle, compression, references. */
// deno-lint-ignore no-explicit-any
function notes(info: any, throttle: number): string {
  const out: string[] = [];
  if (throttle) out.push(`throttle reached ${throttle} %`);
  const c = info.compression;
  if (c) {
    out.push(
      `${c.method}: ${c.pages} pages in runs, ratio ${
        c.bytes > 0 ? (c.raw_bytes / c.bytes).toFixed(2) : "—"
      }, ${c.skipped_windows} windows skipped`,
    );
  }
  if (info.page_refs) out.push(`${info.page_refs.pages} page references`);
  return out.join("; ");
}

/** Options of {@link runFerry}. */
export interface FerryRunOptions {
  /** Sample API latency during the run (costs a little CPU on a 2-core machine). */
  readonly sampleApi?: boolean;
  /** Verify the destination's RAM digest equals the source's (default true). */
  readonly verify?: boolean;
  /**
   * Protects the channel: `destination` are extra flags of the destination ferry
   * (e.g. --tls-cert …), `source` parameters set on the source before it migrates
   * (e.g. tls_ca).
   */
  readonly security?: {
    readonly destination: readonly string[];
    readonly source: Readonly<Record<string, string>>;
  };
}

/**
 * Starts a destination and a source ferry for `spec`, migrates, and measures.
 * A run that does not complete within `spec.timeoutS` is cancelled and reported
 * with `completed: false`; a completed run whose RAM digests differ throws.
 */
export async function runFerry(spec: ScenarioSpec, opts: FerryRunOptions = {}): Promise<FerryRun> {
  let dir: string | undefined;
  let uri = "tcp:127.0.0.1:0";
  if (spec.transport === "unix") {
    dir = await Deno.makeTempDir({ prefix: "ferry-bench-" });
    uri = `unix:${dir}/m.sock`;
  }
  const ram = String(spec.ramBytes);
  // Filling and faulting in RAM takes seconds per GiB on a loaded 2-core machine.
  const startTimeoutMs = 30_000 + 30_000 * spec.ramBytes / 2 ** 30;
  try {
    await using dst = await FerryProcess.destination(ram, uri, [
      ...(opts.security?.destination ?? []),
    ], { startTimeoutMs });
    await using src = await FerryProcess.start(
      [
        "--ram",
        ram,
        "--fill",
        spec.image !== undefined ? `image:${spec.image}` : spec.fill,
        ...workloadArgs(spec),
      ],
      {},
      { startTimeoutMs },
    );
    await src.api("PUT", "/migrations/capabilities", {
      xbzrle: spec.xbzrle !== undefined,
      auto_converge: spec.autoConverge === true,
      verify: spec.verify !== false,
      page_refs: spec.pageRefs === true,
    });
    if (spec.compress) {
      // Read by the destination when the source connects.
      await dst.api("PATCH", "/migrations/parameters", { compress_method: spec.compress.method });
    }
    // ferry's multifd_channels, the same on both ends (1 when the scenario has none).
    const multifd = spec.multifd?.channels ?? 1;
    if (spec.verify === false || spec.pageRefs || multifd > 1) {
      // The destination reads its capabilities when armed: disarm, change, arm again.
      await dst.api("DELETE", "/migrations/incoming");
      await dst.api("PATCH", "/migrations/parameters", { multifd_channels: multifd });
      await dst.api("PUT", "/migrations/capabilities", {
        verify: spec.verify !== false,
        page_refs: spec.pageRefs === true,
      });
      const armed = await dst.api("POST", "/migrations/incoming", { uri });
      if (armed.status !== 202) throw new Error(`re-arming: ${JSON.stringify(armed.body)}`);
      dst.incoming = armed.body.address;
    }
    await src.api("PATCH", "/migrations/parameters", {
      max_bandwidth: Math.round(spec.maxBandwidth),
      downtime_limit: spec.downtimeLimitMs,
      ...(spec.xbzrle ? { xbzrle_cache_size: spec.xbzrle.cacheBytes } : {}),
      ...(opts.security?.source ?? {}),
      ...(spec.compress
        ? { compress_method: spec.compress.method, compress_level: spec.compress.level }
        : {}),
      multifd_channels: multifd,
    });
    // With `wall`: the destination's event stream says when it completed.
    const done = spec.wall ? await incomingDone(dst) : null;
    const t0 = performance.now();
    const started = await src.api("POST", "/migrations", { uri: dst.incoming });
    if (started.status >= 300) {
      throw new Error(`POST /migrations: ${started.status} ${JSON.stringify(started.body)}`);
    }
    let ended = false;
    const sampler = opts.sampleApi ? sampleLatency(src, () => ended) : Promise.resolve([]);
    let throttle = 0;
    let bandwidthBps = NaN;
    const deadline = Date.now() + spec.timeoutS * 1000;
    // deno-lint-ignore no-explicit-any
    let info: any;
    try {
      for (;;) {
        info = (await src.api("GET", "/migrations/current")).body;
        throttle = Math.max(throttle, info.cpu_throttle_percentage ?? 0);
        if (info.ram?.mbps > 0) bandwidthBps = info.ram.mbps * 1e6 / 8;
        if (FINAL.has(info.status)) break;
        if (Date.now() > deadline) {
          await src.api("DELETE", "/migrations/current");
          info = await src.waitFor("/migrations/current", (b) => FINAL.has(b.status), 30_000);
          if (info.status !== "completed") {
            return {
              completed: false,
              totalS: spec.timeoutS,
              downtimeMs: NaN,
              bytes: info.ram?.transferred ?? NaN,
              passes: info.ram?.dirty_sync_count ?? NaN,
              bandwidthBps,
              peakRssSrc: peakRss(src.pid),
              peakRssDst: peakRss(dst.pid),
              apiLatenciesMs: await (ended = true, sampler),
              note: `never completed in ${spec.timeoutS} s` +
                (throttle ? ` (throttle reached ${throttle} %)` : ""),
            };
          }
          break;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      ended = true;
    }
    const apiLatenciesMs = await sampler;
    if (info.status !== "completed") {
      throw new Error(`ferry migration ${info.status}: ${info.error_desc ?? ""}`);
    }
    const wallS = done ? ((await done.at) - t0) / 1000 : NaN;
    if (opts.verify !== false) {
      await dst.waitFor("/migrations/incoming", (b) => b.status === "completed");
      const a = (await src.api("GET", "/vm/ram/digest")).body.sha256;
      const b = (await dst.api("GET", "/vm/ram/digest")).body.sha256;
      if (a !== b) throw new Error("RAM digests differ after a completed migration");
    }
    return {
      completed: true,
      totalS: info.total_time / 1000,
      downtimeMs: info.downtime,
      bytes: info.ram.transferred,
      passes: info.ram.dirty_sync_count,
      bandwidthBps,
      peakRssSrc: peakRss(src.pid),
      peakRssDst: peakRss(dst.pid),
      apiLatenciesMs,
      ...(done ? { wallS } : {}),
      ...(notes(info, throttle) ? { note: notes(info, throttle) } : {}),
    };
  } finally {
    if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
