import assert from "node:assert/strict";
import { AutoConverge, MAX_THROTTLE, THROTTLE_STALL_PERCENT } from "../../engine/auto_converge.ts";

const steps = () => ({ initial: 20, increment: 10 });

Deno.test("AutoConverge.onSync() ignores syncs inside a period shorter than 1 s", () => {
  const ac = new AutoConverge(0, 0, steps);
  assert.equal(ac.onSync(500, 10 << 20, 1 << 20), null);
  assert.equal(ac.throttle, 0);
});

Deno.test("AutoConverge.onSync() throttles after two periods of dirtying over half the sent bytes", () => {
  const ac = new AutoConverge(0, 0, steps);
  assert.equal(ac.onSync(1000, 60, 100), null, "first fast period only counts");
  assert.equal(ac.onSync(2000, 60, 200), 20, "second one throttles to cpu_throttle_initial");
  assert.equal(ac.onSync(3000, 60, 300), null);
  assert.equal(ac.onSync(4000, 60, 400), 30, "then steps by cpu_throttle_increment");
  assert.equal(ac.throttle, 30);
});

Deno.test("AutoConverge.onSync() does not throttle a guest dirtying less than half", () => {
  const ac = new AutoConverge(0, 0, steps);
  for (let t = 1; t <= 10; t++) assert.equal(ac.onSync(t * 1000, 40, t * 100), null);
  assert.equal(ac.throttle, 0);
});

Deno.test("AutoConverge.onSync() sums dirty bytes of several syncs in one period", () => {
  const ac = new AutoConverge(0, 0, steps);
  ac.onSync(400, 30, 50);
  ac.onSync(1000, 30, 100); // 60 dirty vs 100 sent: fast
  assert.equal(ac.onSync(2000, 60, 200), 20);
});

Deno.test("AutoConverge never throttles above 99 %", () => {
  const ac = new AutoConverge(0, 0, () => ({ initial: 90, increment: 50 }));
  let t = 0;
  for (let i = 0; i < 10; i++) ac.onSync(t += 1000, 1000, t);
  assert.equal(ac.throttle, MAX_THROTTLE);
});

Deno.test("AutoConverge reads the throttle steps when it steps (live parameters)", () => {
  let initial = 20;
  const ac = new AutoConverge(0, 0, () => ({ initial, increment: 10 }));
  initial = 45;
  ac.onSync(1000, 100, 100);
  assert.equal(ac.onSync(2000, 100, 200), 45);
});

Deno.test("AutoConverge.onSync() halves the headroom while the guest re-dirties what was sent", () => {
  const ac = new AutoConverge(0, 0, steps);
  const seen: number[] = [];
  let t = 0;
  for (let i = 0; i < 16; i++) {
    t += 1000;
    // Every byte sent in the period is dirtied again: no headway at all.
    const next = ac.onSync(t, 100, (t / 1000) * 100);
    if (next !== null) seen.push(next);
  }
  assert.deepEqual(seen, [20, 60, 80, 90, 99]);
});

Deno.test("AutoConverge.onSync() steps by the increment below the stall share", () => {
  const ac = new AutoConverge(0, 0, steps);
  const dirty = THROTTLE_STALL_PERCENT - 10; // fast (> 50 %) but making headway
  const seen: number[] = [];
  for (let i = 1; i <= 8; i++) {
    const next = ac.onSync(i * 1000, dirty, i * 100);
    if (next !== null) seen.push(next);
  }
  assert.deepEqual(seen, [20, 30, 40, 50]);
});
