/**
 * The flight recorder (docs/ARCHITECTURE.md, "The flight recorder"): every 100 ms
 * window of an outgoing migration, every dirty-log pass, every state change,
 * warning and throttle step, kept so GET /migrations/{id}/timeline can show what
 * happened and {@link explain} can say why in sentences.
 * @module
 */
import type {
  Explanation,
  MigrationInfo,
  Timeline,
  TimelinePass,
  TimelineWindow,
} from "./contract.ts";
import { PAGE_SIZE } from "./format/constants.ts";

/** Windows a timeline keeps: an hour of 100 ms windows; older ones are dropped and counted. */
export const MAX_WINDOWS = 36_000;
/** Passes and events a timeline keeps (oldest dropped first). */
export const MAX_PASSES = 10_000;

/** What the loop hands the recorder at the end of each window. */
export interface WindowSample {
  /** Stream bytes sent in the window and its length, ms. */
  readonly bytes: number;
  readonly ms: number;
  /** Bandwidth estimate, bytes per ms. */
  readonly bandwidth: number;
  readonly totalBytes: number;
  /** RAM pages sent so far (with data or zero). */
  readonly pagesSent: number;
  readonly maxSize: number;
  readonly remaining: number;
  /** ms, Infinity while unknown. */
  readonly expectedDowntime: number;
  readonly throttle: number;
  readonly pass: number;
}

/**
 * Records one migration. Times are ms of the engine's clock from `start`; the
 * recorder never reads a clock itself, so tests hand it any times they like.
 */
export class FlightRecorder {
  readonly #start: number;
  readonly #windows: TimelineWindow[] = [];
  readonly #passes: TimelinePass[] = [];
  readonly #events: Timeline["events"] = [];
  #dropped = 0;
  #lastPages = 0;
  #windowDirty = 0;
  #dirtyRate = 0;
  /** Time and stream position of the last pass (for its dirty rate and bandwidth). */
  #passAt: { t: number; bytes: number } = { t: 0, bytes: 0 };
  #maxThrottle = 0;

  constructor(readonly id: string, start: number) {
    this.#start = start;
  }

  /** A dirty-log sync at `now` found `dirtyPages` newly dirtied; `totalBytes` sent so far. */
  pass(now: number, pass: number, dirtyPages: number, totalBytes: number): void {
    const t = now - this.#start;
    const ms = Math.max(1, t - this.#passAt.t);
    this.#dirtyRate = Math.round(dirtyPages * PAGE_SIZE * 1000 / ms);
    this.#windowDirty += dirtyPages;
    push(this.#passes, {
      pass,
      t: Math.round(t),
      dirty_pages: dirtyPages,
      dirty_rate: this.#dirtyRate,
      bandwidth: Math.round((totalBytes - this.#passAt.bytes) * 1000 / ms),
    }, MAX_PASSES);
    this.#passAt = { t, bytes: totalBytes };
  }

  /** A window ended at `now`. */
  window(now: number, w: WindowSample): void {
    push(
      this.#windows,
      {
        t: Math.round(now - this.#start),
        bytes: w.bytes,
        total_bytes: w.totalBytes,
        pages: w.pagesSent - this.#lastPages,
        dirty_pages: this.#windowDirty,
        dirty_rate: this.#dirtyRate,
        bandwidth: Math.round(w.bandwidth * 1000),
        max_size: Math.round(w.maxSize),
        remaining: w.remaining,
        expected_downtime: Number.isFinite(w.expectedDowntime)
          ? Math.round(w.expectedDowntime)
          : -1,
        throttle: w.throttle,
        pass: w.pass,
      },
      MAX_WINDOWS,
      () => this.#dropped++,
    );
    this.#lastPages = w.pagesSent;
    this.#windowDirty = 0;
  }

  /** Something happened at `now` (a state change, a warning, a throttle step). */
  event(now: number, kind: Timeline["events"][number]["kind"], text: string): void {
    if (kind === "throttle") this.#maxThrottle = Math.max(this.#maxThrottle, Number(text) || 0);
    push(this.#events, { t: Math.round(now - this.#start), kind, text }, MAX_PASSES);
  }

  /** The highest throttle recorded, %. */
  get maxThrottle(): number {
    return this.#maxThrottle;
  }

  /** The timeline so far (copies). */
  timeline(): Timeline {
    return {
      id: this.id,
      windows: [...this.#windows],
      passes: [...this.#passes],
      events: [...this.#events],
      dropped_windows: this.#dropped,
    };
  }
}

function push<T>(list: T[], item: T, max: number, onDrop?: () => void): void {
  list.push(item);
  if (list.length > max) {
    list.shift();
    onDrop?.();
  }
}

const mb = (bytesPerSecond: number) => {
  const v = bytesPerSecond / 1e6;
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} MB/s`;
};
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/**
 * A pass whose dirty rate is at least this share of what the link sent kept up
 * with the link: a pass can find at most the pages it sent dirty again, so a guest
 * rewriting everything shows a dirty rate just under the link's (stream framing).
 */
export const KEEPS_UP_RATIO = 0.95;

/**
 * The first pass from which every later pass (two at least) dirtied about as fast
 * as the link sent or faster (the migration could not get ahead from there on),
 * or null.
 */
function outrunFrom(passes: readonly TimelinePass[]): TimelinePass | null {
  let from: TimelinePass | null = null;
  let run = 0;
  for (const p of passes) {
    if (p.bandwidth > 0 && p.dirty_rate >= p.bandwidth * KEEPS_UP_RATIO) {
      from ??= p;
      run++;
    } else {
      from = null;
      run = 0;
    }
  }
  return run >= 2 ? from : null;
}

/** Mean of the dirty rates and bandwidths of `passes` from `first` on. */
function rates(passes: readonly TimelinePass[], first: number) {
  const from = passes.filter((p) => p.pass >= first);
  const mean = (f: (p: TimelinePass) => number) =>
    from.length === 0 ? 0 : from.reduce((n, p) => n + f(p), 0) / from.length;
  return { dirty: mean((p) => p.dirty_rate), link: mean((p) => p.bandwidth) };
}

/**
 * Why a migration went as it did, from its final info (or its info so far), its
 * timeline and its downtime limit: why it converged when it did or why not, and
 * why the downtime landed where it did.
 */
export function explain(info: MigrationInfo, tl: Timeline, downtimeLimit: number): Explanation {
  const codes = new Set((info.warnings ?? []).map((w) => w.code));
  const warning = (code: string) => info.warnings?.find((w) => w.code === code)?.message;
  const last = tl.windows.at(-1);
  const passes = tl.passes;
  const outrun = outrunFrom(passes);
  const throttled = tl.events.filter((e) => e.kind === "throttle").map((e) => Number(e.text));
  const peak = throttled.length > 0 ? Math.max(...throttled) : 0;
  const throttleNote = peak > 0 ? `; auto-converge throttled the guest up to ${peak} %` : "";
  const outrunText = (p: TimelinePass) => {
    const r = rates(passes, p.pass);
    const verb = r.dirty > r.link ? "exceeded" : "kept up with";
    return `dirty rate ${mb(r.dirty)} ${verb} the ${mb(r.link)} link from pass ${p.pass} on`;
  };
  const total = info.total_time ?? last?.t ?? 0;
  let convergence: string;
  if (info.status === "completed") {
    const forced = codes.has("completion-timeout-switchover")
      ? "the completion deadline forced the switchover"
      : codes.has("stalled-switchover")
      ? "stall detection forced the switchover"
      : null;
    if (forced) {
      convergence = `It did not converge by itself (${
        outrun ? outrunText(outrun) : "what was left stopped shrinking"
      }): ${forced} after ${sec(total)}${throttleNote}`;
    } else if (codes.has("downtime-limit-unachievable")) {
      convergence = `It switched over at the smallest downtime it could reach after ${
        sec(total)
      }: ${
        warning("downtime-limit-unachievable")?.replace(/: switching over.*$/, "")
      }${throttleNote}`;
    } else {
      const at = passes.at(-1);
      const r = rates(passes, 1);
      const fit = last
        ? `: ${mib(last.remaining)} left fit max_size ${mib(last.max_size)} (the ${
          mb(last.bandwidth)
        } bandwidth estimate times the downtime budget)`
        : "";
      convergence = `It converged at pass ${at?.pass ?? info.ram?.dirty_sync_count ?? 1} after ${
        sec(total)
      }${fit}; the guest dirtied ${mb(r.dirty)} against a ${mb(r.link)} link${throttleNote}`;
    }
  } else if (info.status === "failed" || info.status === "cancelled") {
    const why = info.error_desc ? `: ${info.error_desc}` : "";
    const ended = info.status === "failed"
      ? `It failed after ${sec(total)}${why}`
      : `It was ${
        codes.has("completion-timeout-cancel") ? "cancelled at its deadline" : "cancelled"
      } after ${sec(total)}`;
    convergence = outrun
      ? `${ended}; it could not have converged: ${outrunText(outrun)}${throttleNote}`
      : `${ended}; ${shrinking(last, tl)}${throttleNote}`;
  } else {
    convergence = outrun
      ? `Not converging so far: ${outrunText(outrun)}${throttleNote}`
      : `Not converged yet: ${shrinking(last, tl)}${throttleNote}`;
  }
  return { convergence, downtime: downtimeText(info, last, downtimeLimit, warning) };
}

/** How fast what is left was shrinking over the last second of windows. */
function shrinking(last: TimelineWindow | undefined, tl: Timeline): string {
  if (!last) return "no window was recorded";
  const before = tl.windows.at(-11) ?? tl.windows[0];
  const dt = last.t - before.t;
  const shrunk = before.remaining - last.remaining;
  if (dt <= 0 || shrunk <= 0) {
    return `what was left (${mib(last.remaining)}) was not shrinking; max_size was ${
      mib(last.max_size)
    }`;
  }
  const rate = shrunk * 1000 / dt;
  return `what was left (${mib(last.remaining)}) was shrinking by ${
    mb(rate)
  }; at that pace it needed ${sec((last.remaining - last.max_size) * 1000 / rate)} more`;
}

function downtimeText(
  info: MigrationInfo,
  last: TimelineWindow | undefined,
  limit: number,
  warning: (code: string) => string | undefined,
): string {
  if (info.status !== "completed" || info.downtime === undefined) {
    return info.status === "failed" || info.status === "cancelled"
      ? "No downtime: the guest runs on here"
      : `No downtime yet; the last window expected ${
        last && last.expected_downtime >= 0 ? `${last.expected_downtime} ms` : "an unknown amount"
      } against downtime_limit ${limit} ms`;
  }
  const d = Math.round(info.downtime);
  const expected = last && last.expected_downtime >= 0
    ? `; the last window expected ${last.expected_downtime} ms (${mib(last.remaining)} left at ${
      mb(last.bandwidth)
    }, plus the round trip and the final sync)`
    : "";
  const exceeded = warning("downtime-limit-exceeded");
  if (exceeded) return `${exceeded}${expected}`;
  const forced = warning("forced-switchover-downtime");
  if (forced) return `${forced}${expected}`;
  return `The downtime (${d} ms) stayed within downtime_limit (${limit} ms)${expected}`;
}
