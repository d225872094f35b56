import assert from "node:assert/strict";
import type { Clock } from "../../engine/clock.ts";
import type { MemoryTransports } from "../../transports/memory.ts";
import { call, testApp } from "../helpers/app.ts";

export { type SseFrame, SseReader } from "../../testing/sse_reader.ts";

/** Resolves after `ms` milliseconds (the timer is always cleared by firing). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it is true; fails after `tries` polls of `ms` each. */
export async function waitFor(check: () => boolean, what: string, tries = 200, ms = 10) {
  for (let i = 0; i < tries; i++) {
    if (check()) return;
    await sleep(ms);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A second ferry sharing `transports`, its guest filled with random bytes and a counter set. */
export async function sourceApp(transports: MemoryTransports, ram = 1 << 20, clock?: Clock) {
  const src = testApp({ transports, ram, clock });
  src.guest.fillRandom(11);
  src.guest.blocks[0].bytes.fill(0, 0, ram / 4);
  src.guest.counter = 77n;
  const patch = await call(src.app, "PATCH", "/migrations/parameters", {
    max_bandwidth: 1 << 30,
  });
  assert.equal(patch.status, 200);
  return src;
}
