/**
 * When a compressing migration actually compresses (docs/ARCHITECTURE.md,
 * "Compression"): window by window, it compares how fast the compressor takes
 * pages in with how fast the link carries bytes, and skips compression for a
 * window when the link is the faster one (or the pages do not compress).
 *
 * It only sees numbers the saver and the loop measured with the engine's clock:
 * the raw and compressed bytes of each compressed run with the ms it took, and
 * each 100 ms window's bandwidth. A window decides the next one. Measurements go
 * stale, so the losing choice is tried again for one window every
 * {@link PROBE_EVERY} windows.
 * @module
 */

/** Windows between two tries of the choice not taken. */
export const PROBE_EVERY = 10;
/** Below this ratio (raw / compressed) compression is not worth its CPU. */
export const MIN_RATIO = 1.05;

/** The decision and what it rests on, as the migration info shows it. */
export interface GateState {
  /** True when the current window compresses. */
  readonly active: boolean;
  /** Compressor intake, bytes per ms (NaN before one was measured). */
  readonly compressorRate: number;
  /** The link's rate, bytes per ms (NaN before one was measured). */
  readonly linkRate: number;
  /** raw / compressed of the last window that compressed (NaN before one). */
  readonly ratio: number;
  /** Windows that skipped compression. */
  readonly skippedWindows: number;
}

/** The per-window on/off switch of compression. */
export class CompressionGate {
  #active = true;
  #compressorRate = NaN;
  #linkRate = NaN;
  #ratio = NaN;
  #raw = 0;
  #out = 0;
  #ms = 0;
  /** Windows since the choice last changed (a probe is due every PROBE_EVERY). */
  #streak = 0;
  #probing = false;
  #skipped = 0;

  /** True when pages should be compressed in the current window. */
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
    if (compressed && this.#raw > 0) {
      this.#compressorRate = this.#ms > 0 ? this.#raw / this.#ms : Infinity;
      this.#ratio = this.#out > 0 ? this.#raw / this.#out : Infinity;
    }
    if (bandwidth > 0) {
      // A plain window measures the link; a compressing one shows it carries at least that much.
      if (!compressed) this.#linkRate = bandwidth;
      else if (this.#linkRate < bandwidth) this.#linkRate = bandwidth;
    }
    this.#raw = this.#out = this.#ms = 0;
    // Until a plain window measured the link, only the rate limit bounds it.
    const link = Number.isNaN(this.#linkRate) ? limit : Math.min(this.#linkRate, limit);
    let want: boolean;
    if (Number.isNaN(this.#compressorRate)) want = true; // never measured: try it
    else if (!(this.#ratio >= MIN_RATIO)) want = false;
    else want = this.#compressorRate > link;
    if (this.#probing) {
      // The probe window measured the other choice; decide from fresh numbers.
      this.#probing = false;
      this.#streak = 0;
      this.#active = want;
      return;
    }
    if (want !== this.#active) {
      this.#streak = 0;
      this.#active = want;
      return;
    }
    if (++this.#streak >= PROBE_EVERY) {
      this.#probing = true;
      this.#active = !want;
    }
  }
}
