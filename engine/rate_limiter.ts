/** Length of one rate-limit window in ms (QEMU's BUFFER_DELAY). */
export const WINDOW_MS = 100;

/** What one finished window measured. */
export interface WindowStats {
  /** Bytes sent in the window. */
  readonly bytes: number;
  /** Window length in ms (at least WINDOW_MS unless the migration ended). */
  readonly ms: number;
  /** Measured bandwidth in bytes per ms. */
  readonly bandwidth: number;
}

/**
 * QEMU's per-window byte budget: a window of WINDOW_MS may carry
 * `maxBandwidth * WINDOW_MS / 1000` bytes. `bandwidth` is read at every check so a
 * live parameter change applies to the running window. The limiter counts bytes
 * against an external counter (the stream writer's total) so it never copies data.
 */
export class RateLimiter {
  #windowStart: number;
  #windowBytes: number;

  constructor(
    private readonly now: () => number,
    private readonly maxBandwidth: () => number,
    bytesNow: number,
  ) {
    this.#windowStart = now();
    this.#windowBytes = bytesNow;
  }

  /** Bytes one window may carry at the current max bandwidth (Infinity when unlimited). */
  budget(): number {
    const bw = this.maxBandwidth();
    return bw <= 0 || !Number.isFinite(bw) ? Infinity : (bw * WINDOW_MS) / 1000;
  }

  /** True when the bytes sent in this window reached the budget. */
  exceeded(bytesNow: number): boolean {
    return bytesNow - this.#windowBytes >= this.budget();
  }

  /** When the current window ends (clock ms). */
  get windowEnd(): number {
    return this.#windowStart + WINDOW_MS;
  }

  /** Bytes sent so far in this window. */
  sent(bytesNow: number): number {
    return bytesNow - this.#windowBytes;
  }

  /**
   * Closes the window if WINDOW_MS have passed, returning what it measured, and
   * starts the next one; returns null while the window is still open.
   */
  tick(bytesNow: number): WindowStats | null {
    const now = this.now();
    const ms = now - this.#windowStart;
    if (ms < WINDOW_MS) return null;
    const bytes = bytesNow - this.#windowBytes;
    this.#windowStart = now;
    this.#windowBytes = bytesNow;
    return { bytes, ms, bandwidth: bytes / ms };
  }

  /**
   * Leaves `ms` out of the current window: time spent not sending (waiting for
   * the destination to drain) must not read as low bandwidth. The bytes sent
   * before the pause still count, so frequent pauses cannot starve the estimate.
   */
  exclude(ms: number): void {
    this.#windowStart += Math.max(0, ms);
  }

  /** How long to sleep before the window ends (0 when already over). */
  remaining(): number {
    return Math.max(0, this.windowEnd - this.now());
  }
}
