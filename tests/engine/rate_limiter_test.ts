import assert from "node:assert/strict";
import { RateLimiter, WINDOW_MS } from "../../engine/rate_limiter.ts";
import { FakeClock } from "../helpers/fake_clock.ts";

function limiter(bandwidth: number, start = 0, bytes = 0) {
  const clock = new FakeClock(start);
  let bw = bandwidth;
  const rl = new RateLimiter(clock.now, () => bw, bytes);
  return { clock, rl, setBandwidth: (v: number) => (bw = v) };
}

Deno.test("RateLimiter.budget() is max_bandwidth / 10 bytes per 100 ms window", () => {
  assert.equal(WINDOW_MS, 100);
  assert.equal(limiter(32 << 20).rl.budget(), (32 << 20) / 10);
  assert.equal(limiter(1000).rl.budget(), 100);
  assert.equal(limiter(1).rl.budget(), 0.1);
});

Deno.test("RateLimiter.exceeded() turns true once the window's bytes reach the budget", () => {
  const { rl } = limiter(10_000, 0, 5_000); // budget 1000, counter starts at 5000
  assert.equal(rl.exceeded(5_000), false);
  assert.equal(rl.exceeded(5_999), false);
  assert.equal(rl.exceeded(6_000), true);
  assert.equal(rl.exceeded(9_000), true);
  assert.equal(rl.sent(5_750), 750);
});

Deno.test("RateLimiter.tick() returns null before 100 ms and the window's stats after, then starts a new window", () => {
  const { clock, rl } = limiter(10_000, 1_000, 0);
  clock.advance(99);
  assert.equal(rl.tick(800), null);
  assert.equal(rl.exceeded(1_000), true, "the window is still the same");
  clock.advance(1);
  assert.deepEqual(rl.tick(1_000), { bytes: 1_000, ms: 100, bandwidth: 10 });
  assert.equal(rl.exceeded(1_000), false, "a new window has a fresh budget");
  assert.equal(rl.sent(1_500), 500);
  assert.equal(rl.windowEnd, 1_200);
  clock.advance(250); // a late tick measures the real length
  assert.deepEqual(rl.tick(1_500), { bytes: 500, ms: 250, bandwidth: 2 });
  assert.equal(rl.windowEnd, 1_450);
});

Deno.test("RateLimiter.remaining() is the time left in the window, never negative", () => {
  const { clock, rl } = limiter(10_000);
  assert.equal(rl.remaining(), 100);
  clock.advance(30);
  assert.equal(rl.remaining(), 70);
  clock.advance(500);
  assert.equal(rl.remaining(), 0);
});

Deno.test("RateLimiter: a bandwidth change applies to the running window", () => {
  const { rl, setBandwidth } = limiter(10_000); // budget 1000
  assert.equal(rl.exceeded(600), false);
  setBandwidth(5_000); // budget 500: 600 already sent is over it
  assert.equal(rl.budget(), 500);
  assert.equal(rl.exceeded(600), true);
  setBandwidth(100_000); // budget 10000
  assert.equal(rl.exceeded(600), false);
  assert.equal(rl.exceeded(9_999), false);
  assert.equal(rl.exceeded(10_000), true);
});

Deno.test("RateLimiter is unlimited for zero, negative or infinite bandwidth", () => {
  for (const bw of [0, -1, Infinity, NaN]) {
    const { rl } = limiter(bw);
    assert.equal(rl.budget(), Infinity, `bandwidth ${bw}`);
    assert.equal(rl.exceeded(Number.MAX_SAFE_INTEGER), false, `bandwidth ${bw}`);
  }
});
