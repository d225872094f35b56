/**
 * pause_before_switchover end to end: two ferries on real sockets (API and
 * migration on port 0), the source on an injected clock. The migration stops the
 * guest and waits in pre-switchover, kept alive past progress_timeout, until it
 * is continued (it completes, RAM equal) or cancelled (the guest resumes on the
 * source, the destination starts nothing).
 */
import assert from "node:assert/strict";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { dirtyingClock, LiveFerry } from "../helpers/live_ferry.ts";

async function pausedPair() {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(9);
  guest.start();
  const clock = dirtyingClock(guest, 20);
  const src = LiveFerry.start({ guest, clock });
  const dst = LiveFerry.start();
  // A cancelled source looks like a cut to its destination, which would wait resume_grace
  // for a resume (docs/ARCHITECTURE.md, "Resuming an interrupted pre-copy"): fail at once.
  await dst.api("PATCH", "/migrations/parameters", { resume_grace: 0 });
  const uri = await dst.listen();
  assert.equal(
    (await src.api("PUT", "/migrations/capabilities", { pause_before_switchover: true })).status,
    200,
  );
  assert.equal(
    (await src.api("PATCH", "/migrations/parameters", {
      max_bandwidth: 10 << 20,
      downtime_limit: 300,
      progress_timeout: 1000,
    })).status,
    200,
  );
  const early = await src.api("POST", "/migrations/current/continue");
  assert.equal(early.status, 409, "nothing to continue yet");
  assert.equal(early.body.error.code, "not-paused");
  const paused = src.outgoingState((s) => s === "pre-switchover" || s === "failed");
  assert.equal((await src.api("POST", "/migrations", { uri })).status, 202);
  assert.equal(await paused, "pre-switchover");
  const info = (await src.api("GET", "/migrations/current")).body;
  assert.equal(info.status, "pre-switchover");
  assert.equal((await src.api("GET", "/vm")).body.run_state, "finish-migrate", "guest stopped");
  assert.equal((await dst.api("GET", "/migrations/incoming")).body.status, "active");
  assert.notEqual(dst.guest.runState, "running");
  // Three progress_timeouts pass on the source's clock: the keep-alive holds both ends.
  for (let i = 0; i < 12; i++) {
    clock.advance(250);
    await src.api("GET", "/migrations/current"); // lets the keep-alive's PING and PONG through
  }
  assert.equal((await src.api("GET", "/migrations/current")).body.status, "pre-switchover");
  assert.equal((await dst.api("GET", "/migrations/incoming")).body.status, "active");
  return { src, dst, guest };
}

Deno.test("pause_before_switchover: waits in pre-switchover with the guest stopped until continued, then completes with equal RAM", async () => {
  const { src, dst, guest } = await pausedPair();
  await using _s = src;
  await using _d = dst;
  const res = await src.api("POST", "/migrations/current/continue");
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.equal(res.body.status, "device");
  assert.equal(await src.outgoingFinal(), "completed");
  const info = (await src.api("GET", "/migrations/current")).body;
  assert.ok(info.downtime >= 3000, `the pause counts in the downtime: ${info.downtime}`);
  assert.equal(await dst.incomingFinal(), "completed");
  assert.equal(guest.runState, "postmigrate");
  assert.equal(await ramDigest(dst.guest), await ramDigest(guest));
  assert.equal((await src.api("POST", "/migrations/current/continue")).status, 409);
});

Deno.test("pause_before_switchover: a cancel in pre-switchover resumes the guest on the source; the destination fails and starts nothing", async () => {
  const { src, dst, guest } = await pausedPair();
  await using _s = src;
  await using _d = dst;
  const res = await src.api("DELETE", "/migrations/current");
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(await src.outgoingFinal(), "cancelled");
  assert.equal(guest.runState, "running");
  assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
  assert.equal(await dst.incomingFinal(), "failed");
  assert.equal((await dst.api("POST", "/vm/start")).status, 409);
});
