import assert from "node:assert/strict";
import { AuthBackoff } from "../../routes/auth_backoff.ts";
import { FakeClock } from "../helpers/fake_clock.ts";

Deno.test("AuthBackoff: each failure doubles the lockout from 100 ms, up to 30 s", () => {
  const clock = new FakeClock(1000);
  const backoff = new AuthBackoff({ now: clock.now });
  const lockouts: number[] = [];
  for (let i = 0; i < 12; i++) {
    lockouts.push(backoff.fail("10.0.0.1"));
    assert.equal(backoff.lockedFor("10.0.0.1"), lockouts[i]);
    clock.advance(lockouts[i]); // wait it out
    assert.equal(backoff.lockedFor("10.0.0.1"), 0);
  }
  assert.deepEqual(lockouts, [
    100,
    200,
    400,
    800,
    1600,
    3200,
    6400,
    12800,
    25600,
    30000,
    30000,
    30000,
  ]);
});

Deno.test("AuthBackoff: the lockout runs down with time", () => {
  const clock = new FakeClock();
  const backoff = new AuthBackoff({ now: clock.now });
  backoff.fail("a");
  backoff.fail("a");
  assert.equal(backoff.lockedFor("a"), 200);
  clock.advance(150);
  assert.equal(backoff.lockedFor("a"), 50);
  clock.advance(50);
  assert.equal(backoff.lockedFor("a"), 0);
});

Deno.test("AuthBackoff: addresses are counted apart", () => {
  const clock = new FakeClock();
  const backoff = new AuthBackoff({ now: clock.now });
  for (let i = 0; i < 5; i++) backoff.fail("192.0.2.1");
  assert.equal(backoff.lockedFor("192.0.2.1"), 1600);
  assert.equal(backoff.lockedFor("192.0.2.2"), 0);
  assert.equal(backoff.fail("192.0.2.2"), 100);
});

Deno.test("AuthBackoff: quiet time halves the count, so old failures are forgotten", () => {
  const clock = new FakeClock();
  const backoff = new AuthBackoff({ now: clock.now, quietMs: 60_000 });
  for (let i = 0; i < 8; i++) backoff.fail("a");
  assert.equal(backoff.failures("a"), 8);
  clock.advance(60_000);
  assert.equal(backoff.failures("a"), 4);
  clock.advance(59_999);
  assert.equal(backoff.failures("a"), 4);
  clock.advance(1);
  assert.equal(backoff.failures("a"), 2);
  assert.equal(backoff.fail("a"), 400, "the third failure counted: 100 ms doubled twice");
  clock.advance(10 * 60_000);
  assert.equal(backoff.failures("a"), 0);
  assert.equal(backoff.fail("a"), 100);
});

Deno.test("AuthBackoff: remembers at most maxEntries addresses, forgetting the oldest", () => {
  const clock = new FakeClock();
  const backoff = new AuthBackoff({ now: clock.now, maxEntries: 3 });
  for (const a of ["a", "b", "c"]) backoff.fail(a);
  backoff.fail("a"); // a is now the most recent
  backoff.fail("d");
  assert.equal(backoff.size, 3);
  assert.equal(backoff.failures("b"), 0, "b was the oldest");
  assert.equal(backoff.failures("a"), 2);
  assert.equal(backoff.failures("c"), 1);
  assert.equal(backoff.failures("d"), 1);
});
