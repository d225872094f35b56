import type { Clock } from "../../engine/clock.ts";

/**
 * A virtual Clock for engine tests: time stands still until someone sleeps; a
 * sleep lets one timer turn pass (so other tasks run) and then advances virtual
 * time by exactly the requested amount. `now` and `sleep` are arrow properties
 * because the engine passes `clock.now` around unbound.
 */
export class FakeClock implements Clock {
  #t: number;
  /** Every sleep requested, in ms. */
  readonly sleeps: number[] = [];

  constructor(start = 0) {
    this.#t = start;
  }

  readonly now = (): number => this.#t;

  /** Moves virtual time forward without sleeping. */
  advance(ms: number): void {
    this.#t += ms;
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
        this.#t += Math.max(0, ms);
        resolve();
      }, 0);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
}
