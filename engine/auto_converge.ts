/** Shortest period over which the dirty rate is compared with the transfer rate, ms. */
export const THROTTLE_PERIOD_MS = 1000;
/** Share of the bytes sent in a period that the guest may dirty before it counts as too fast, %. */
export const THROTTLE_TRIGGER_PERCENT = 50;
/** Periods in a row with too much dirtying before the throttle steps up. */
export const THROTTLE_TRIGGER_COUNT = 2;
/**
 * Share of the sent bytes dirtied again in a period (%) at which the migration is
 * making no headway: each step then also halves the headroom left (20 → 60 → 80 →
 * 90 → 99 with QEMU's default steps) instead of adding only the increment.
 */
export const THROTTLE_STALL_PERCENT = 80;
/** Highest throttle, %. */
export const MAX_THROTTLE = 99;

/**
 * auto-converge (QEMU's migration_trigger_throttle): at every dirty-log sync that
 * closes a period of at least THROTTLE_PERIOD_MS, compare the bytes the guest
 * dirtied in it with the bytes sent in it. When the guest dirtied more than half
 * of what was sent, for THROTTLE_TRIGGER_COUNT periods, throttle the vCPU: first
 * to `cpu_throttle_initial`, then `cpu_throttle_increment` more each time, at most
 * MAX_THROTTLE. Unlike QEMU, a guest re-dirtying THROTTLE_STALL_PERCENT of what
 * was sent gets bigger steps (half the remaining headroom when that is more than
 * the increment): a guest rewriting its working set faster than one pass needs
 * ~95 % before any pass finds it asleep, and QEMU's +10 % every two seconds takes
 * ~20 s to get there.
 */
export class AutoConverge {
  #periodStart: number;
  #periodDirty = 0;
  #periodSentFrom: number;
  #highCount = 0;
  #throttle = 0;

  constructor(
    now: number,
    bytesSent: number,
    private readonly steps: () => { initial: number; increment: number },
  ) {
    this.#periodStart = now;
    this.#periodSentFrom = bytesSent;
  }

  /** The throttle the guest should run with now, %. */
  get throttle(): number {
    return this.#throttle;
  }

  /**
   * Records a sync that found `dirtyBytes` newly dirtied; `bytesSent` is the
   * stream's running total. Returns the new throttle when it changed, else null.
   */
  onSync(now: number, dirtyBytes: number, bytesSent: number): number | null {
    this.#periodDirty += dirtyBytes;
    if (now - this.#periodStart < THROTTLE_PERIOD_MS) return null;
    const sent = bytesSent - this.#periodSentFrom;
    const tooFast = this.#periodDirty * 100 > sent * THROTTLE_TRIGGER_PERCENT;
    const stalled = this.#periodDirty * 100 >= sent * THROTTLE_STALL_PERCENT;
    this.#periodStart = now;
    this.#periodDirty = 0;
    this.#periodSentFrom = bytesSent;
    if (!tooFast) return null;
    if (++this.#highCount < THROTTLE_TRIGGER_COUNT) return null;
    this.#highCount = 0;
    const { initial, increment } = this.steps();
    const halve = stalled ? Math.round(100 - (100 - this.#throttle) / 2) : 0;
    const next = this.#throttle === 0
      ? initial
      : Math.min(MAX_THROTTLE, Math.max(this.#throttle + increment, halve));
    if (next === this.#throttle) return null;
    this.#throttle = next;
    return next;
  }

  /**
   * Steps the throttle up now, whatever the dirty rate (a stalled migration whose
   * `stall_action` is `throttle`): to `cpu_throttle_initial` first, then half the
   * remaining headroom or the increment, whichever is more. Returns the new
   * throttle, or null when it is already at MAX_THROTTLE.
   */
  escalate(): number | null {
    if (this.#throttle >= MAX_THROTTLE) return null;
    const { initial, increment } = this.steps();
    const halve = Math.round(100 - (100 - this.#throttle) / 2);
    this.#throttle = this.#throttle === 0
      ? initial
      : Math.min(MAX_THROTTLE, Math.max(this.#throttle + increment, halve));
    this.#highCount = 0;
    return this.#throttle;
  }
}
