/**
 * The one time source of the engine and the API: every duration, deadline, pause
 * and timestamp goes through a Clock, so tests can replace real time with a
 * virtual one that only moves when they say so.
 */
export interface Clock {
  /** Milliseconds from an arbitrary origin, monotonic: durations and deadlines. */
  now(): number;
  /** Wall-clock time in ms since the Unix epoch: timestamps clients read as dates. */
  wall(): number;
  /**
   * Waits because the caller wants `ms` to pass (pacing, like the rate limiter's):
   * resolves after `ms`, or rejects with the signal's reason once it aborts. A
   * virtual clock moves its time forward for a sleep.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /**
   * Waits for a deadline watched while other work goes on (a timeout, a
   * keep-alive): resolves once {@link now} reaches `time`, or rejects with the
   * signal's reason once it aborts. A virtual clock never moves its time for one:
   * it resolves when something else did.
   */
  until(time: number, signal?: AbortSignal): Promise<void>;
}

/** Resolves after `ms` of real time, or rejects with the signal's reason once it aborts. */
function timer(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const id = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    const onAbort = () => {
      clearTimeout(id);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The real clock: performance.now(), Date.now() and timers. */
export const systemClock: Clock = {
  now: () => performance.now(),
  wall: () => Date.now(),
  sleep: timer,
  until: (time, signal) => timer(time - performance.now(), signal),
};

/**
 * Waits until `promise` settled or `ms` of the clock's time passed, whichever
 * comes first; never rejects (a bounded wait for something that normally ends by
 * itself).
 */
export async function settledWithin(
  clock: Clock,
  promise: Promise<unknown>,
  ms: number,
): Promise<void> {
  const done = new AbortController();
  try {
    await Promise.race([
      promise.then(() => {}, () => {}),
      clock.until(clock.now() + ms, done.signal),
    ]);
  } finally {
    done.abort();
  }
}
