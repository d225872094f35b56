import assert from "node:assert/strict";
import type { Clock } from "../../engine/clock.ts";
import type { MemoryTransports } from "../../transports/memory.ts";
import { call, testApp } from "../helpers/app.ts";

export { type SseFrame, SseReader } from "../../testing/sse_reader.ts";

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
