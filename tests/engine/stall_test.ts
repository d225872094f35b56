import assert from "node:assert/strict";
import { StallDetector } from "../../engine/stall.ts";

Deno.test("StallDetector: counts observations since the last new low (1 % below the previous)", () => {
  let limit = 3;
  const d = new StallDetector(() => limit);
  assert.equal(d.observe(1000), false);
  assert.equal(d.low, 1000);
  assert.equal(d.observe(995), false, "0.5 % lower is no new low");
  assert.equal(d.observe(1200), false);
  assert.equal(d.observe(999), true, "three in a row without a new low");
  assert.equal(d.since, 3);
  assert.equal(d.observe(980), false, "2 % lower is a new low");
  assert.equal(d.since, 0);
  assert.equal(d.low, 980);
  limit = 0;
  for (let i = 0; i < 100; i++) assert.equal(d.observe(5000), false, "limit 0: never a stall");
});

Deno.test("StallDetector: nothing left is never a stall; restart() counts again", () => {
  const d = new StallDetector(() => 2);
  d.observe(0);
  for (let i = 0; i < 10; i++) assert.equal(d.observe(0), false);
  const e = new StallDetector(() => 2);
  e.observe(10);
  e.observe(10);
  e.restart();
  assert.equal(e.observe(10), false);
  assert.equal(e.observe(10), true);
});
