/**
 * When a compressing migration actually compresses (docs/ARCHITECTURE.md,
 * "Compression"): window by window, it compares how fast the compressor takes
 * pages in with how fast the link carries bytes, and skips compression for a
 * window when the link is the faster one (or the pages do not compress).
 *
 * It only sees numbers the saver and the loop measured with the engine's clock:
 * the raw and compressed bytes of each compressed run with the ms it took, and
 * each 100 ms window's bandwidth. A window decides the next one.
 *
 * - A window without compression still compresses one run in {@link SAMPLE_EVERY}
 *   (sent compressed if it shrank), so the compressor's speed and ratio stay
 *   known at little cost. The migration starts that way: its first window
 *   measures the link at full speed.
 * - A compressing window only shows a lower bound of the link (the compressor may
 *   be what limits it), so every {@link PROBE_EVERY}th window goes without, to
 *   measure the link again.
 * @module
 */

/** A window without compression compresses one run in this many, to measure the compressor. */
export const SAMPLE_EVERY = 16;
/** While compressing, one window in this many goes without, to measure the link. */
export const PROBE_EVERY = 10;
/** Below this ratio (raw / compressed) compression is not worth its CPU. */
export const MIN_RATIO = 1.05;

/** The decision and what it rests on, as the migration info shows it. */
export interface GateState {
  /** True when the current window compresses every run. */
  readonly active: boolean;
  /** Compressor intake, bytes per ms (NaN before one was measured). */
  readonly compressorRate: number;
  /** The link's rate, bytes per ms (NaN before one was measured). */
  readonly linkRate: number;
  /** raw / compressed of the runs compressed in the last window that had any (NaN before). */
  readonly ratio: number;
  /** Windows that did not compress every run. */
  readonly skippedWindows: number;
}

/** The per-window on/off switch of compression. */
export class CompressionGate {
  #active: boolean;
  #compressorRate = NaN;
  #linkRate = NaN;
  #ratio = NaN;
  #raw = 0;
  #out = 0;
  #ms = 0;
  /** Runs offered in this window while inactive (every SAMPLE_EVERY-th is compressed). */
  #offered = 0;
  /** Compressing windows in a row (a plain probe is due every PROBE_EVERY). */
  #streak = 0;
  #skipped = 0;

  /** A gate whose first window compresses every run only when `active` (default: sampling). */
  constructor(active = false) {
    this.#active = active;
  }

  /** True when the current window compresses every run. */
  get active(): boolean {
    return this.#active;
  }

  get state(): GateState {
    return {
      active: this.#active,
      compressorRate: this.#compressorRate,
      linkRate: this.#linkRate,
      ratio: this.#ratio,
      skippedWindows: this.#skipped,
    };
  }

  /** Whether the next run is compressed: every run while active, else one in SAMPLE_EVERY. */
  compressNext(): boolean {
    return this.#active || this.#offered++ % SAMPLE_EVERY === 0;
  }

  /** One compressed run: `raw` bytes in, `out` bytes out, in `ms` of the engine's clock. */
  measured(raw: number, out: number, ms: number): void {
    this.#raw += raw;
    this.#out += out;
    this.#ms += ms;
  }

  /**
   * A window ended having carried `bandwidth` bytes per ms on the wire; the rate
   * limit allows `limit` bytes per ms (Infinity without one). Decides the next
   * window.
   */
  endWindow(bandwidth: number, limit: number): void {
    const compressed = this.#active;
    if (!compressed) this.#skipped++;
    if (this.#raw > 0) {
      this.#compressorRate = this.#ms > 0 ? this.#raw / this.#ms : Infinity;
      this.#ratio = this.#out > 0 ? this.#raw / this.#out : Infinity;
    }
    if (bandwidth > 0) {
      // A plain window measures the link; a compressing one shows it carries at least that much.
      if (!compressed) this.#linkRate = bandwidth;
      else if (this.#linkRate < bandwidth) this.#linkRate = bandwidth;
    }
    this.#raw = this.#out = this.#ms = 0;
    this.#offered = 0;
    const link = Number.isNaN(this.#linkRate) ? limit : Math.min(this.#linkRate, limit);
    const want = this.#ratio >= MIN_RATIO && this.#compressorRate > link;
    if (want && compressed && ++this.#streak >= PROBE_EVERY) {
      // Time to see the link again without compression.
      this.#streak = 0;
      this.#active = false;
      return;
    }
    if (!want || !compressed) this.#streak = 0;
    this.#active = want;
  }
}
