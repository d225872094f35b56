/**
 * Dirty-rate measurement without migrating (QEMU's calc-dirty-rate in its
 * dirty-bitmap mode): every 100 ms it syncs the guest's dirty log and counts the
 * distinct pages dirtied per window of 100 ms, 200 ms, 500 ms, 1 s, … — the
 * working set and how it grows with the window, which the planner's model of
 * pre-copy needs (docs/ARCHITECTURE.md, "Planning a migration").
 * @module
 */
import { popcount32, type RamBlock } from "../vm/ram.ts";
import type { Guest } from "../vm/guest.ts";
import type { Clock } from "./clock.ts";
import { PAGE_SIZE } from "./format/constants.ts";
import { EngineError } from "./errors.ts";
import { xbzrleEncode } from "./format/xbzrle.ts";
import { PLAIN_RECORD } from "./sections/ram_records.ts";
import type { DirtyRateInfo, DirtyRateStatus, WorkingSet } from "./plan_contract.ts";

/** One sample: the dirty log is synced every SAMPLE_MS. */
export const SAMPLE_MS = 100;
/** Default measurement length, ms. */
export const DEFAULT_CALC_TIME_MS = 1000;
/** Window lengths reported, in samples (1-2-5 steps from 100 ms to 10 min). */
export const WINDOW_SAMPLES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] as const;

/** Pages whose XBZRLE encoding is tried, per period. */
export const XBZRLE_SAMPLE_PAGES = 256;
/** Samples in an XBZRLE period: the delta of a page dirtied over about a pass of 1 s. */
export const XBZRLE_PERIOD_SAMPLES = 10;
/** Wire bytes of an XBZRLE record besides its encoding: header, flag and length. */
const XBZRLE_RECORD = 8 + 1 + 2;

/** What the meter is built from. */
export interface DirtyRateDeps {
  readonly guest: Guest;
  readonly clock: Clock;
  /**
   * Why syncing the dirty log now would harm something (a migration owns it), or
   * null. Asked before the measurement starts and before every sync: a migration
   * that started meanwhile cancels the measurement, whose syncs would otherwise
   * take dirty bits the migration needs.
   */
  readonly busy: () => string | null;
}

/** The pages of every block, one bit each. */
type PageSet = Uint32Array[];

function emptySet(blocks: readonly RamBlock[]): PageSet {
  return blocks.map((b) => new Uint32Array(b.dirty.length));
}

function countSet(set: PageSet): number {
  let n = 0;
  for (const map of set) for (let w = 0; w < map.length; w++) if (map[w]) n += popcount32(map[w]);
  return n;
}

/** Accumulates the samples of one window length. */
interface WindowAcc {
  readonly samples: number;
  readonly set: PageSet;
  count: number;
  sum: number;
  max: number;
}

/**
 * Measures the guest's dirty rate. One measurement at a time; the last result
 * stays readable. The dirty log is one per guest and a sync clears it, so a
 * measurement never runs beside a migration: `start` refuses while one is active
 * (`migration-active`) and a migration that starts meanwhile cancels it. Outside
 * a migration the log's content is not needed (a migration starts from a bitmap
 * with every page set), so clearing it costs nothing.
 */
export class DirtyRateMeter {
  readonly #deps: DirtyRateDeps;
  #state: DirtyRateStatus = "none";
  #calcTime = 0;
  #startWall = 0;
  #startedAt = 0;
  #elapsed = 0;
  #tickPages = 0;
  #syncMs = 0;
  #syncs = 0;
  #windows: WindowAcc[] = [];
  #all: PageSet = [];
  #dataPages = 0;
  #error: string | undefined;
  /** XBZRLE sampling: the sampled pages (block, page), their copies, what they cost. */
  #xbPages: [number, number][] = [];
  #xbCopies = new Uint8Array(0);
  #xbDirty: PageSet = [];
  #xbPeriod = XBZRLE_PERIOD_SAMPLES;
  #xbCount = 0;
  #xbBytes = 0;
  #abort: AbortController | null = null;
  /** Settles when the current (or last) measurement ended. */
  done: Promise<void> = Promise.resolve();

  constructor(deps: DirtyRateDeps) {
    this.#deps = deps;
  }

  /** The current state. */
  get state(): DirtyRateStatus {
    return this.#state;
  }

  /**
   * Starts a measurement of `calcTimeMs` (rounded down to whole samples, at least
   * one). Throws `migration-active` while another measurement or a migration runs.
   */
  start(calcTimeMs = DEFAULT_CALC_TIME_MS): DirtyRateInfo {
    if (this.#state === "measuring") {
      throw new EngineError("migration-active", "A dirty-rate measurement is already running");
    }
    const busy = this.#deps.busy();
    if (busy !== null) {
      throw new EngineError("migration-active", `Cannot measure the dirty rate: ${busy}`);
    }
    const { guest, clock } = this.#deps;
    const samples = Math.max(1, Math.floor(calcTimeMs / SAMPLE_MS));
    this.#state = "measuring";
    this.#calcTime = calcTimeMs;
    this.#startWall = clock.wall();
    this.#elapsed = 0;
    this.#tickPages = 0;
    this.#syncMs = 0;
    this.#syncs = 0;
    this.#error = undefined;
    this.#windows = WINDOW_SAMPLES.filter((k) => k <= samples).map((k) => ({
      samples: k,
      set: emptySet(guest.blocks),
      count: 0,
      sum: 0,
      max: 0,
    }));
    this.#all = emptySet(guest.blocks);
    this.#xbDirty = emptySet(guest.blocks);
    this.#xbPeriod = Math.min(XBZRLE_PERIOD_SAMPLES, samples);
    this.#xbCount = 0;
    this.#xbBytes = 0;
    this.#abort = new AbortController();
    // What was logged before now belongs to no window.
    this.#sync(emptySet(guest.blocks));
    this.#xbSample(null);
    this.#startedAt = clock.now();
    this.done = this.#run(samples, this.#abort.signal);
    return this.info();
  }

  /** Cancels a running measurement (the result keeps what it measured); false when none ran. */
  cancel(why = "cancelled"): boolean {
    if (this.#state !== "measuring") return false;
    this.#state = "cancelled";
    this.#error = why;
    this.#abort?.abort(new Error(why));
    return true;
  }

  async #run(samples: number, signal: AbortSignal): Promise<void> {
    const { clock, guest } = this.#deps;
    try {
      for (let i = 1; i <= samples; i++) {
        await clock.sleep(Math.max(0, this.#startedAt + i * SAMPLE_MS - clock.now()), signal);
        const busy = this.#deps.busy();
        if (busy !== null) {
          this.cancel(`${busy}: the measurement stopped so as not to take its dirty pages`);
          return;
        }
        const tick = emptySet(guest.blocks);
        const pages = this.#sync(tick);
        this.#elapsed = clock.now() - this.#startedAt;
        this.#tickPages += pages;
        for (let b = 0; b < tick.length; b++) {
          const t = tick[b];
          const all = this.#all[b];
          for (let w = 0; w < t.length; w++) {
            if (t[w] === 0) continue;
            all[w] |= t[w];
            this.#xbDirty[b][w] |= t[w];
            for (const acc of this.#windows) acc.set[b][w] |= t[w];
          }
        }
        if (i % this.#xbPeriod === 0) {
          this.#xbMeasure();
          this.#xbSample(this.#xbDirty);
          for (const map of this.#xbDirty) map.fill(0);
        }
        for (const acc of this.#windows) {
          if (i % acc.samples !== 0) continue;
          const n = countSet(acc.set);
          acc.count++;
          acc.sum += n;
          acc.max = Math.max(acc.max, n);
          for (const map of acc.set) map.fill(0);
        }
      }
      this.#dataPages = guest.blocks.reduce(
        (n, b) => n + b.touched.reduce((m, w) => m + popcount32(w), 0),
        0,
      );
      this.#state = "measured";
    } catch (e) {
      if (!signal.aborted) {
        this.#state = "cancelled";
        this.#error = `The measurement failed: ${(e as Error).message}`;
      }
    } finally {
      this.#abort = null;
    }
  }

  /**
   * Picks the pages whose XBZRLE deltas the next period measures and copies them:
   * up to XBZRLE_SAMPLE_PAGES spread evenly over those dirtied in the period that
   * ended (the ones a migration would send again), or over all of RAM at first.
   */
  #xbSample(dirtied: PageSet | null): void {
    const blocks = this.#deps.guest.blocks;
    const has = (b: number, p: number) =>
      dirtied === null || (dirtied[b][p >>> 5] & (1 << (p & 31))) !== 0;
    const total = dirtied === null ? blocks.reduce((n, b) => n + b.pages, 0) : countSet(dirtied);
    const n = Math.min(XBZRLE_SAMPLE_PAGES, total);
    const picked: [number, number][] = [];
    // The k-th candidate (in address order) is taken when it is the next of k = ⌊i·total/n⌋.
    let k = 0;
    for (let b = 0; b < blocks.length && picked.length < n; b++) {
      for (let p = 0; p < blocks[b].pages && picked.length < n; p++) {
        if (dirtied !== null && dirtied[b][p >>> 5] === 0) {
          p |= 31; // skip a clean word
          continue;
        }
        if (!has(b, p)) continue;
        if (k === Math.floor(picked.length * total / n)) picked.push([b, p]);
        k++;
      }
    }
    this.#xbPages = picked;
    if (this.#xbCopies.length < n * PAGE_SIZE) this.#xbCopies = new Uint8Array(n * PAGE_SIZE);
    picked.forEach(([b, p], i) =>
      this.#xbCopies.set(
        blocks[b].bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE),
        i * PAGE_SIZE,
      )
    );
  }

  /** Encodes each sampled page dirtied in the period against its copy: what XBZRLE would send. */
  #xbMeasure(): void {
    const blocks = this.#deps.guest.blocks;
    const out = new Uint8Array(PAGE_SIZE);
    this.#xbPages.forEach(([b, p], i) => {
      if ((this.#xbDirty[b][p >>> 5] & (1 << (p & 31))) === 0) return;
      const n = xbzrleEncode(
        this.#xbCopies.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE),
        blocks[b].bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE),
        out,
      );
      this.#xbCount++;
      this.#xbBytes += n === 0 ? 0 : n < 0 ? PLAIN_RECORD : XBZRLE_RECORD + n;
    });
  }

  /** Syncs every block's dirty log into `into`; returns the pages it set. */
  #sync(into: PageSet): number {
    const { guest, clock } = this.#deps;
    const t0 = clock.now();
    let n = 0;
    for (let b = 0; b < guest.blocks.length; b++) n += guest.blocks[b].syncDirty(into[b]);
    this.#syncMs += clock.now() - t0;
    this.#syncs++;
    return n;
  }

  /** The last (or current) measurement (QEMU's query-dirty-rate). */
  info(): DirtyRateInfo {
    const blocks = this.#deps.guest.blocks;
    const base: DirtyRateInfo = {
      status: this.#state,
      page_size: PAGE_SIZE,
      total_pages: blocks.reduce((n, b) => n + b.pages, 0),
    };
    if (this.#state === "none") return base;
    const seconds = this.#elapsed / 1000;
    const perSecond = seconds > 0 ? this.#tickPages / seconds : 0;
    const workingSet: WorkingSet[] = this.#windows.filter((a) => a.count > 0).map((a) => ({
      window_ms: a.samples * SAMPLE_MS,
      samples: a.count,
      pages: round2(a.sum / a.count),
      max_pages: a.max,
      mib: round2((a.sum / a.count) * PAGE_SIZE / 2 ** 20),
    }));
    return {
      ...base,
      calc_time_ms: this.#calcTime,
      start_time: this.#startWall,
      duration_ms: Math.round(this.#elapsed),
      ...(this.#state === "measured" ? { data_pages: this.#dataPages } : {}),
      pages_per_second: Math.round(perSecond),
      mib_per_second: round2(perSecond * PAGE_SIZE / 2 ** 20),
      distinct_pages: countSet(this.#all),
      working_set: workingSet,
      sync_ms: round2(this.#syncs > 0 ? this.#syncMs / this.#syncs : 0),
      ...(this.#xbCount > 0
        ? {
          xbzrle: {
            sampled_pages: this.#xbCount,
            bytes_per_page: round2(this.#xbBytes / this.#xbCount),
            ratio: round2(PLAIN_RECORD / Math.max(1, this.#xbBytes / this.#xbCount)),
          },
        }
        : {}),
      ...(this.#error ? { error_desc: this.#error } : {}),
    };
  }
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

/**
 * The working set as a function of the window: distinct pages a guest running
 * unthrottled dirties in `ms`. Between measured windows it interpolates linearly;
 * beyond the longest, it grows from there at the last measured slope toward all
 * of RAM, slowing as a writer spread uniformly over RAM would (a cold tail of
 * pages keeps being found; a set that stopped growing stays flat).
 */
export function workingSetCurve(info: DirtyRateInfo): (ms: number) => number {
  const total = info.total_pages;
  const points: [number, number][] = [[0, 0]];
  for (const w of info.working_set ?? []) points.push([w.window_ms, Math.min(total, w.pages)]);
  const whole = info.duration_ms ?? 0;
  if (info.distinct_pages !== undefined && whole > points[points.length - 1][0] * 1.2) {
    points.push([whole, Math.min(total, info.distinct_pages)]);
  }
  if (points.length === 1) {
    // Only the rate is known: a uniform writer at that rate.
    const perMs = (info.pages_per_second ?? 0) / 1000;
    return (ms) => uniform(total, 0, perMs, ms);
  }
  const [tl, dl] = points[points.length - 1];
  const [tp, dp] = points[points.length - 2];
  const slope = Math.max(0, (dl - dp) / (tl - tp));
  return (ms) => {
    if (ms <= 0) return 0;
    if (ms >= tl) return uniform(total, dl, slope, ms - tl);
    let i = 1;
    while (points[i][0] < ms) i++;
    const [t0, d0] = points[i - 1];
    const [t1, d1] = points[i];
    return d0 + (d1 - d0) * (ms - t0) / (t1 - t0);
  };
}

/** Pages dirty after `ms` more of a uniform writer at `perMs` over `total`, `from` already dirty. */
function uniform(total: number, from: number, perMs: number, ms: number): number {
  const left = total - from;
  if (left <= 0 || perMs <= 0) return Math.min(total, from);
  return total - left * Math.exp(-perMs * ms / left);
}
