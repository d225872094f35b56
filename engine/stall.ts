/**
 * Stall detection (docs/ARCHITECTURE.md, "Convergence"): a migration makes
 * progress while what is left to send keeps reaching new lows. Bytes moving are
 * not progress: a guest that dirties as fast as the link sends keeps the link
 * busy and the remaining amount flat.
 * @module
 */

/** A new low must be at least this much below the last one (1 %): noise is not progress. */
export const NEW_LOW_RATIO = 0.99;

/**
 * Counts observations since the watched amount last reached a new low (at least
 * 1 % below the previous one). `limit` is read at every observation; 0 never
 * reports a stall.
 */
export class StallDetector {
  #low = Infinity;
  #since = 0;

  constructor(private readonly limit: () => number) {}

  /** The lowest amount seen (each new low at least 1 % below the one before). */
  get low(): number {
    return this.#low;
  }

  /** Observations since the last new low. */
  get since(): number {
    return this.#since;
  }

  /** Records one observation; true when `limit` of them in a row brought no new low. */
  observe(amount: number): boolean {
    if (amount < this.#low * NEW_LOW_RATIO || (this.#low === Infinity && amount < Infinity)) {
      this.#low = amount;
      this.#since = 0;
      return false;
    }
    if (amount === 0 && this.#low === 0) {
      this.#since = 0; // nothing left at all is not a stall
      return false;
    }
    this.#since++;
    const n = this.limit();
    return n > 0 && this.#since >= n;
  }

  /** Starts counting again (after an escalation changed the conditions). */
  restart(): void {
    this.#since = 0;
  }
}

/** A migration stalled and its `stall_action` is `fail` (or throttling reached its maximum). */
export class StallError extends Error {
  override readonly name = "StallError";
  constructor(
    /** The lowest amount left to send that was reached, bytes. */
    readonly lowBytes: number,
    /** Windows without a new low. */
    readonly windows: number,
    why: string,
  ) {
    super(
      `Migration stalled: what is left to send has not dropped below ${mib(lowBytes)} for ` +
        `${windows} windows (${(windows / 10).toFixed(1)} s, stall_windows)${why}`,
    );
  }
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
