/**
 * Settles like `promise`, or rejects naming `what` if it has not settled after
 * `ms` (a guard so a regression fails the test instead of hanging it; not a
 * speed assertion). The timer is always cleared.
 */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves after one timer turn, letting pending I/O and timers run. */
export function tick(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Resolves once `check` is true, looking after every timer turn; rejects naming
 * `what` if it is still false after `ms` (a guard so a regression fails the test
 * instead of hanging it; not a speed assertion).
 */
export async function waitUntil(check: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await tick(1);
  }
}
