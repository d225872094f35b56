/**
 * Predicts a migration before it starts by running ferry's pre-copy loop on
 * paper (docs/ARCHITECTURE.md, "Planning a migration"): the same 100 ms windows
 * and byte budget, max_size = bandwidth × (downtime_limit − round trip − sync),
 * syncs when a pass ends or what is left is below max_size, the drain before the
 * switchover, stall detection, the floor of an unreachable limit, and the real
 * AutoConverge steps. The guest is its measured working-set curve: the distinct
 * pages it dirties in a window of a given length (engine/dirty_rate.ts), slowed
 * by the throttle.
 * @module
 */
import type { ChannelSecurity, Transports } from "../transports/transport.ts";
import { AutoConverge } from "./auto_converge.ts";
import type { Clock } from "./clock.ts";
import { PAGE_SIZE } from "./format/constants.ts";
import { FLOOR_SYNCS } from "./outgoing.ts";
import type { Capabilities, Parameters } from "./params.ts";
import type { DirtyRateInfo, Plan, PlanOutcome, Prediction } from "./plan_contract.ts";
import { workingSetCurve } from "./dirty_rate.ts";
import { WINDOW_MS } from "./rate_limiter.ts";
import { PLAIN_RECORD } from "./sections/ram_records.ts";
import { StallDetector } from "./stall.ts";

/** Pages the saver sends between two looks at the window's budget (ram_saver.ts's iterate). */
const ITERATE_PAGES = 64;
/** Wire bytes of a ZERO record (header and its one fill byte). */
const ZERO_RECORD = 9;
/** How long a plan simulates a migration that neither converges nor stalls, ms. */
export const PLAN_HORIZON_MS = 600_000;
/** The highest bandwidth the planner looks for one that converges at, bytes/s. */
export const MAX_PLAN_BANDWIDTH = 64 * 2 ** 30;

/** What the planner knows about the guest, the link and the settings. */
export interface PlanModel {
  /** Pages of guest RAM. */
  readonly totalPages: number;
  /** Pages that may hold data; the others go as ZERO records in the first pass. */
  readonly dataPages: number;
  /** Distinct pages the unthrottled guest dirties in a window of `ms`. */
  readonly workingSet: (ms: number) => number;
  /** Round trip to the destination, ms (counted from the first drain on, as the engine does). */
  readonly rttMs: number;
  /** Time of one dirty-log sync, ms (the final one is part of the downtime). */
  readonly syncMs: number;
  /** The channel has a return path (tcp:, unix:): the loop drains before it switches over. */
  readonly returnPath: boolean;
  readonly params: Readonly<Parameters>;
  readonly capabilities: Readonly<Capabilities>;
  /**
   * With the xbzrle capability: wire bytes of a re-sent page found in the cache
   * (the measurement's sampled deltas); absent, XBZRLE is modelled as whole pages.
   */
  readonly xbzrleBytesPerPage?: number;
  /** Give up after this much simulated time, ms (default PLAN_HORIZON_MS). */
  readonly horizonMs?: number;
  /**
   * How fast the link carries a window's budget, bytes per ms (default: at once).
   * The engine sends each window's budget as fast as the link takes it, then sleeps.
   */
  readonly linkBytesPerMs?: number;
  /** Sees every simulated sync and throttle step (for comparing with an engine's events). */
  readonly trace?: (event: string) => void;
}

/** One prediction, plus what an explanation needs. */
export interface Simulation extends Prediction {
  /** max_size at the end (bytes). */
  readonly maxSize: number;
  /** Pages the last full pass found dirty (what each pass re-sends, at the end). */
  readonly lastPassPages: number;
  /** How long the last full pass took, ms. */
  readonly lastPassMs: number;
  /** The round trip and the sync alone reach the downtime limit. */
  readonly unachievable: boolean;
}

/**
 * Runs the pre-copy loop of engine/outgoing.ts on the model, window by window,
 * with sending as a fluid at max_bandwidth; the switchover costs the pages then
 * left at that bandwidth plus the round trip and the final sync (the engine's
 * expected downtime).
 */
export function simulate(m: PlanModel): Simulation {
  const p = m.params;
  const bpm = p.max_bandwidth / 1000; // bytes per ms
  const budget = bpm * WINDOW_MS;
  const link = m.linkBytesPerMs ?? Infinity;
  const horizon = m.horizonMs ?? PLAN_HORIZON_MS;
  const total = m.totalPages;
  const data = Math.min(total, m.dataPages);
  const bulkCost = total > 0 ? (data * PLAIN_RECORD + (total - data) * ZERO_RECORD) / total : 0;
  const eps = 1e-9;
  const xbBytes = m.capabilities.xbzrle ? m.xbzrleBytesPerPage : undefined;
  const cachePages = p.xbzrle_cache_size / PAGE_SIZE;
  /** Wire bytes of a page dirtied since the first pass (XBZRLE: hits as deltas, misses whole). */
  let dirtyCost = PLAIN_RECORD;
  /** What the engine believes a pending page costs (ram_saver.ts's pendingWireBytes). */
  let pendingCost = xbBytes === undefined ? PAGE_SIZE : PLAIN_RECORD;
  let t = 0;
  let ws = 0; // window start
  let windowSent = 0;
  let sent = 0;
  let bulk = total; // first-pass pages still to send
  let dirty = 0; // dirtied pages in the migration bitmap
  let maxSize = 0;
  let passes = 1; // the setup sync
  let rtt = 0;
  let drainedAt = -1;
  let settle = false;
  let unachievable = false;
  let effSince = 0; // guest time since the last sync (slowed by the throttle)
  let throttle = 0;
  let topThrottle = 0;
  let passStart = 0;
  let lastPassPages = total;
  let lastPassMs = 0;
  let outcome: PlanOutcome = "completed";
  const floor = new StallDetector(() => FLOOR_SYNCS);
  const stall = new StallDetector(() => p.stall_windows);
  const steps = () => ({ initial: p.cpu_throttle_initial, increment: p.cpu_throttle_increment });
  let converge = m.capabilities.auto_converge ? new AutoConverge(0, 0, steps) : null;
  const stopCost = () => rtt + m.syncMs;
  const setThrottle = (x: number) => {
    m.trace?.(`thr ${x} t=${Math.round(t)}`);
    throttle = x;
    topThrottle = Math.max(topThrottle, x);
  };
  const advance = (dt: number) => {
    t += dt;
    effSince += dt * (1 - throttle / 100);
  };
  const logPages = () => m.workingSet(effSince) * (1 - (bulk + dirty) / total);
  const sync = (): number => {
    const added = Math.max(0, logPages());
    dirty += added;
    effSince = 0;
    passes++;
    m.trace?.(`pass ${passes} t=${Math.round(t)} dirty=${Math.round(bulk + dirty)}`);
    return added;
  };
  const checkAchievable = () => {
    if (stopCost() >= p.downtime_limit) unachievable = true;
  };
  const finish = (result: PlanOutcome): Simulation => {
    const ended = result === "completed" || result === "stalled-switchover";
    // complete(): the final sync with the guest stopped, then everything left, unthrottled.
    if (ended) sync();
    const left = bulk * bulkCost + dirty * dirtyCost;
    const downtime = left / Math.max(bpm, eps) + stopCost();
    return {
      converges: result === "completed" && !unachievable,
      outcome: result,
      total_time_ms: Math.round(t + (ended ? downtime : 0)),
      passes,
      downtime_ms: Math.round(downtime * 10) / 10,
      transferred_bytes: Math.round(sent + (ended ? left : 0)),
      throttle: topThrottle,
      maxSize,
      lastPassPages,
      lastPassMs,
      unachievable,
    };
  };
  if (bpm <= 0) return finish("no-convergence");
  for (;;) {
    if (t > horizon) {
      outcome = "no-convergence";
      break;
    }
    if (windowSent < budget - eps) {
      let pendingPages = bulk + dirty;
      let synced = false;
      if (pendingPages * pendingCost < maxSize || pendingPages < 0.5) {
        const passDone = pendingPages < 0.5;
        const added = sync();
        if (xbBytes !== undefined && passDone) {
          // After the first pass the cache holds a share of all RAM; later, the pages of
          // the last pass, so a dirty set larger than the cache misses the rest.
          const first = lastPassMs === 0;
          const hit = Math.min(1, cachePages / Math.max(1, first ? total : dirty));
          dirtyCost = hit * xbBytes + (1 - hit) * PLAIN_RECORD;
          // The engine's estimate comes from the pages of a whole pass after the first.
          if (!first) pendingCost = dirtyCost;
        }
        synced = true;
        if (passDone) {
          lastPassPages = added;
          lastPassMs = t - passStart;
          passStart = t;
        }
        const up = converge?.onSync(t, added * PAGE_SIZE, sent) ?? null;
        if (up) setThrottle(up);
        pendingPages = bulk + dirty;
      }
      const pending = pendingPages < 0.5 ? 0 : pendingPages * pendingCost;
      const fresh = drainedAt === sent || (synced && pending > 0);
      if (unachievable && fresh && floor.observe(pending)) {
        const up = converge?.escalate() ?? null;
        if (up === null) settle = true;
        else {
          setThrottle(up);
          floor.restart();
        }
      }
      if (!settle && pending > 0 && pending >= maxSize) {
        // One iterate(): chunks of ITERATE_PAGES until the window's budget is reached
        // (the last chunk overshoots it) or the pass ends; the first pass's pages first.
        const room = budget - windowSent;
        const cost = bulk > 0 ? bulkCost : dirtyCost;
        const left = bulk > 0 ? bulk : dirty;
        const pages = Math.min(left, Math.ceil(room / (ITERATE_PAGES * cost)) * ITERATE_PAGES);
        if (bulk > 0) bulk = pages >= bulk ? 0 : bulk - pages;
        else dirty = pages >= dirty ? 0 : dirty - pages;
        const bytes = pages * cost;
        advance(bytes / link);
        sent += bytes;
        windowSent += bytes;
      } else if (m.returnPath && drainedAt !== sent) {
        advance(m.rttMs);
        ws += m.rttMs; // the limiter leaves the wait out of the window
        rtt = m.rttMs;
        drainedAt = sent;
        checkAchievable();
        continue;
      } else {
        break;
      }
    } else {
      advance(Math.max(0, ws + WINDOW_MS - t)); // sleep to the window's end
    }
    if (t >= ws + WINDOW_MS - eps) {
      const bandwidth = windowSent / Math.max(eps, t - ws);
      ws = t;
      windowSent = 0;
      maxSize = bandwidth * Math.max(0, p.downtime_limit - stopCost());
      checkAchievable();
      const backlog = (bulk + dirty + Math.max(0, logPages())) * PAGE_SIZE;
      if (!settle && stall.observe(backlog)) {
        if (p.stall_action === "switchover") {
          settle = true;
          outcome = "stalled-switchover";
        } else if (p.stall_action === "throttle") {
          converge ??= new AutoConverge(t, sent, steps);
          const up = converge.escalate();
          if (up === null) return finish("stalled-failed");
          setThrottle(up);
          stall.restart();
        } else {
          return finish("stalled-failed");
        }
      }
    }
  }
  return finish(outcome);
}

/**
 * The least max_bandwidth (bytes/s) at which the model converges, to 1 %; null
 * when it does not even at MAX_PLAN_BANDWIDTH.
 */
export function bandwidthToConverge(m: PlanModel): number | null {
  const at = (bw: number) =>
    simulate({ ...m, params: { ...m.params, max_bandwidth: Math.round(bw) } }).converges;
  let hi = Math.max(m.params.max_bandwidth, 1 << 20);
  while (!at(hi)) {
    if (hi >= MAX_PLAN_BANDWIDTH) return null;
    hi = Math.min(MAX_PLAN_BANDWIDTH, hi * 4);
  }
  let lo = Math.max(1, hi / 4);
  if (at(lo)) return Math.round(lo);
  while (hi / lo > 1.01) {
    const mid = Math.sqrt(lo * hi);
    if (at(mid)) hi = mid;
    else lo = mid;
  }
  return Math.round(hi);
}

/** What a plan is made from besides the parameters and capabilities. */
export interface PlanInputs {
  /** The last dirty-rate measurement (status `measured`), or null for a guest that is not running. */
  readonly dirtyRate: DirtyRateInfo | null;
  /** What GET /vm/dirty-rate answers now (reported in the plan). */
  readonly dirtyRateInfo: DirtyRateInfo;
  readonly totalPages: number;
  /** Pages that may hold data now (used when there is no measurement). */
  readonly dataPages: number;
  readonly params: Readonly<Parameters>;
  readonly capabilities: Readonly<Capabilities>;
  /** The probed round trip, ms, or null when the destination was not probed. */
  readonly rttMs: number | null;
  /** The URI's channel has a return path (tcp:, unix:, or no URI: assumed). */
  readonly returnPath: boolean;
  /** Block migration was asked for (not modelled). */
  readonly block: boolean;
  /** The engine's wall clock now, for the measurement's age. */
  readonly now: number;
}

/**
 * The plan of POST /migrations/plan: the simulated migration, and when it does
 * not converge, the bandwidth that would make it and what auto-converge would do.
 */
export function makePlan(inputs: PlanInputs): Plan {
  const { params, capabilities } = inputs;
  const info = inputs.dirtyRate;
  const model: PlanModel = {
    totalPages: inputs.totalPages,
    dataPages: info?.data_pages ?? inputs.dataPages,
    workingSet: info ? workingSetCurve(info) : () => 0,
    rttMs: inputs.rttMs ?? 0,
    syncMs: info?.sync_ms ?? 0,
    returnPath: inputs.returnPath,
    params,
    capabilities,
    ...(info?.xbzrle ? { xbzrleBytesPerPage: info.xbzrle.bytes_per_page } : {}),
  };
  const sim = simulate(model);
  const assumptions: string[] = [];
  if (info === null) assumptions.push("the guest is not running: it dirties nothing");
  else {
    const age = Math.max(0, Math.round((inputs.now - (info.start_time ?? inputs.now)) / 1000));
    assumptions.push(
      `the guest dirties as measured ${age} s ago over ${info.duration_ms} ms; beyond the ` +
        `longest window its working set is extrapolated`,
    );
  }
  assumptions.push(
    "the link carries max_bandwidth: the probe measures the round trip only" +
      (inputs.rttMs === null ? " (no destination was probed: round trip 0)" : ""),
  );
  if (capabilities.xbzrle) {
    assumptions.push(
      info?.xbzrle
        ? `xbzrle sends ${info.xbzrle.bytes_per_page} bytes for a re-sent page found in its ` +
          `cache (ratio ${info.xbzrle.ratio}, from ${info.xbzrle.sampled_pages} sampled pages); ` +
          `its encoding time is not modelled`
        : "xbzrle is modelled as sending whole pages (no sampled deltas)",
    );
  }
  if (params.compress_method !== "none") {
    assumptions.push(`${params.compress_method} compression is modelled as not shrinking pages`);
  }
  if (capabilities.page_refs) assumptions.push("page_refs is modelled as finding no equal pages");
  if (inputs.block) assumptions.push("the disk of block migration is not modelled");
  const plan: Plan = {
    ...prediction(sim),
    bandwidth: params.max_bandwidth,
    bandwidth_source: "max_bandwidth",
    rtt_ms: Math.round((inputs.rttMs ?? 0) * 100) / 100,
    rtt_source: inputs.rttMs === null ? "none" : "probe",
    dirty_rate: inputs.dirtyRateInfo,
    explanation: explain(sim, model, info),
    assumptions,
  };
  if (!sim.converges) {
    const xbzrle = !capabilities.xbzrle && info?.xbzrle && params.compress_method === "none" &&
        !capabilities.page_refs
      ? {
        ratio: info.xbzrle.ratio,
        ...prediction(simulate({ ...model, capabilities: { ...capabilities, xbzrle: true } })),
      }
      : null;
    plan.to_converge = {
      bandwidth: bandwidthToConverge(model),
      auto_converge: capabilities.auto_converge ? null : prediction(simulate({
        ...model,
        capabilities: { ...capabilities, auto_converge: true },
      })),
      xbzrle,
    };
  }
  return plan;
}

/** The API's part of a simulation. */
function prediction(s: Simulation): Prediction {
  return {
    converges: s.converges,
    outcome: s.outcome,
    total_time_ms: s.total_time_ms,
    passes: s.passes,
    downtime_ms: s.downtime_ms,
    transferred_bytes: s.transferred_bytes,
    throttle: s.throttle,
  };
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/** Why the simulated migration went the way it did, in a sentence or two. */
function explain(s: Simulation, m: PlanModel, info: DirtyRateInfo | null): string {
  const p = m.params;
  const link = `${mib(p.max_bandwidth)}/s`;
  const rate = info ? `${(info.mib_per_second ?? 0).toFixed(1)} MiB/s` : "nothing";
  const goal = `${mib(s.maxSize)} (max_size: ${link} × the ${p.downtime_limit} ms limit less ` +
    `round trip and sync)`;
  const throttled = s.throttle > 0 ? `, throttled by auto-converge to ${s.throttle} %` : "";
  const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  switch (s.outcome) {
    case "completed":
      if (s.unachievable) {
        return `The round trip and the final sync alone reach the ${p.downtime_limit} ms limit: ` +
          `it switches over at the smallest downtime it reaches, ~${Math.round(s.downtime_ms)} ms.`;
      }
      return `Converges after ${s.passes} dirty-log syncs in ${secs(s.total_time_ms)}: the guest ` +
        `dirties ${rate} against a ${link} link${throttled}, and what is left falls below ${goal}.`;
    default: {
      const last = `each pass of ~${secs(s.lastPassMs)} finds ` +
        `${mib(s.lastPassPages * PAGE_SIZE)} dirtied again`;
      const end = s.outcome === "stalled-failed"
        ? `stall detection fails it after ${secs(s.total_time_ms)} (stall_windows ` +
          `${p.stall_windows}, stall_action ${p.stall_action})`
        : s.outcome === "stalled-switchover"
        ? `stall detection switches over after ${secs(s.total_time_ms)} with a downtime of ` +
          `~${Math.round(s.downtime_ms)} ms`
        : `it still runs after ${secs(s.total_time_ms)}`;
      return `Does not converge: the guest dirties ${rate} against a ${link} link${throttled}; ` +
        `${last}, never below ${goal}: ${end}.`;
    }
  }
}

/** How long a probe of the destination may take, ms. */
export const PROBE_TIMEOUT_MS = 5000;

/** True for the URIs whose channel has a return path (and can be probed). */
export function hasReturnPath(uri: string): boolean {
  return uri.startsWith("tcp:") || uri.startsWith("unix:");
}

/**
 * Probes the destination of a `tcp:` or `unix:` URI for the round trip: it
 * connects as a migration would (with TLS and the secret's proof when the
 * parameters ask for them) and closes at once, sending no stream. The
 * destination's incoming gate drops such a peer and counts it in
 * `refused_peers`; its guest is never touched. Returns the connect time in ms
 * (with TLS or a secret that is a few round trips: an upper bound), or null for
 * URIs that are not probed (`file:` would create the file, `exec:` run the
 * command). A destination that cannot be reached throws the transport's error.
 */
export async function probeRoundTrip(
  transports: Transports,
  uri: string,
  clock: Clock,
  security?: ChannelSecurity,
): Promise<number | null> {
  if (!hasReturnPath(uri)) return null;
  const timeout = new AbortController();
  const deadline = clock.until(clock.now() + PROBE_TIMEOUT_MS, timeout.signal).then(
    () => timeout.abort(new Error(`no answer within ${PROBE_TIMEOUT_MS} ms`)),
    () => {},
  );
  const t0 = clock.now();
  try {
    using _channel = await transports.connect(uri, timeout.signal, security);
    return clock.now() - t0;
  } finally {
    timeout.abort();
    await deadline;
  }
}
