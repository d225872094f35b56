import type { Clock } from "../../engine/clock.ts";

/** Where a FakeClock's wall clock starts by default: 2025-11-24T16:00:00Z, in epoch ms. */
export const FAKE_WALL_ORIGIN = 1_764_000_000_000;

interface Deadline {
  readonly time: number;
  readonly resolve: () => void;
}

/**
 * A virtual Clock for tests: time stands still until someone sleeps or the test
 * calls {@link advance}. A sleep lets one timer turn pass (so other tasks run) and
 * then advances virtual time by exactly the requested amount; an `until` never
 * moves time itself: it resolves once a sleep or `advance` reached its deadline.
 * `wall()` is {@link FAKE_WALL_ORIGIN} plus virtual time. The methods are arrow
 * properties because the engine passes `clock.now` around unbound.
 */
export class FakeClock implements Clock {
  #t: number;
  readonly #wallOrigin: number;
  /** Pending `until` deadlines, in the order they were asked for. */
  #deadlines: Deadline[] = [];
  /** Every sleep requested, in ms. */
  readonly sleeps: number[] = [];

  constructor(start = 0, wallOrigin = FAKE_WALL_ORIGIN) {
    this.#t = start;
    this.#wallOrigin = wallOrigin;
  }

  readonly now = (): number => this.#t;

  readonly wall = (): number => this.#wallOrigin + this.#t;

  /** How many `until` deadlines are pending (a test waits for a watcher to arm). */
  get pending(): number {
    return this.#deadlines.length;
  }

  /** Moves virtual time forward without sleeping; resolves the deadlines it reached. */
  advance(ms: number): void {
    this.#t += ms;
    this.#fire();
  }

  readonly sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      this.sleeps.push(ms);
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal!.reason);
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        this.advance(Math.max(0, ms));
        resolve();
      }, 0);
      signal?.addEventListener("abort", onAbort, { once: true });
    });

  readonly until = (time: number, signal?: AbortSignal): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const deadline: Deadline = {
        time,
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        this.#deadlines = this.#deadlines.filter((d) => d !== deadline);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#deadlines.push(deadline);
      this.#fire();
    });

  /** Resolves every deadline virtual time has reached, earliest first. */
  #fire(): void {
    const due = this.#deadlines.filter((d) => d.time <= this.#t);
    if (due.length === 0) return;
    this.#deadlines = this.#deadlines.filter((d) => d.time > this.#t);
    due.sort((a, b) => a.time - b.time);
    for (const d of due) d.resolve();
  }
}
