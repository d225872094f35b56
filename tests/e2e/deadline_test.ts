/**
 * Deadlines with actions end to end: two ferries on real sockets (API and
 * migration on port 0), the source on an injected clock whose guest dirties 400
 * of its 512 pages per window while the link carries 256 (10 MiB/s): it never
 * converges by itself, so the completion deadline decides.
 */
import assert from "node:assert/strict";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { dirtyingClock, LiveFerry } from "../helpers/live_ferry.ts";

async function pair(params: Record<string, unknown>) {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(7);
  guest.start();
  const src = LiveFerry.start({ guest, clock: dirtyingClock(guest, 400) });
  const dst = LiveFerry.start();
  const uri = await dst.listen();
  const set = await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 10 << 20,
    completion_timeout_ms: 3000,
    ...params,
  });
  assert.equal(set.status, 200, JSON.stringify(set.body));
  return { src, dst, uri, guest };
}

async function migrate(src: LiveFerry, uri: string) {
  const res = await src.api("POST", "/migrations", { uri });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  await src.outgoingFinal();
  return (await src.api("GET", "/migrations/current")).body;
}

function codes(info: { warnings?: { code: string }[] }): string[] {
  return (info.warnings ?? []).map((w) => w.code);
}

Deno.test("deadline on_timeout cancel: the migration is cancelled at the deadline saying why, the source guest runs on, the destination fails and can be armed again", async () => {
  const { src, dst, uri, guest } = await pair({ on_timeout: "cancel" });
  await using _s = src;
  await using _d = dst;
  const info = await migrate(src, uri);
  assert.equal(info.status, "cancelled", JSON.stringify(info));
  assert.match(info.error_desc, /within its deadline of 3000 ms .*on_timeout cancel/);
  assert.deepEqual(codes(info), ["completion-timeout-cancel"]);
  assert.ok(info.total_time >= 3000, `cancelled at ${info.total_time} ms of the clock`);
  assert.equal(guest.runState, "running");
  assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
  assert.equal(await dst.incomingFinal(), "failed");
  assert.equal((await dst.api("POST", "/vm/start")).status, 409, "no partial guest starts");
  await dst.listen();
});

Deno.test("deadline on_timeout switchover: stop-and-copy at the deadline, the downtime it cost reported, the destination's RAM equal", async () => {
  const { src, dst, uri, guest } = await pair({ on_timeout: "switchover" });
  await using _s = src;
  await using _d = dst;
  const info = await migrate(src, uri);
  assert.equal(info.status, "completed", JSON.stringify(info));
  assert.deepEqual(codes(info), ["completion-timeout-switchover", "forced-switchover-downtime"]);
  const cost = info.warnings[1].message;
  assert.match(cost, /forced by the completion deadline cost \d+ ms of downtime/);
  assert.equal(Number(/cost (\d+) ms/.exec(cost)![1]), Math.round(info.downtime));
  assert.equal(await dst.incomingFinal(), "completed");
  assert.equal(guest.runState, "postmigrate");
  assert.equal(await ramDigest(dst.guest), await ramDigest(guest), "RAM equal");
});

Deno.test("deadline on_timeout throttle: auto-converge steps up at the deadline and each second after until the guest converges", async () => {
  const { src, dst, uri, guest } = await pair({ on_timeout: "throttle" });
  await using _s = src;
  await using _d = dst;
  const throttles: number[] = [];
  const setThrottle = guest.setThrottle.bind(guest);
  guest.setThrottle = (p: number) => {
    throttles.push(p);
    setThrottle(p);
  };
  const info = await migrate(src, uri);
  assert.equal(info.status, "completed", JSON.stringify(info));
  const steps = codes(info).filter((c) => c === "completion-timeout-throttle").length;
  assert.ok(steps >= 1, JSON.stringify(info.warnings));
  assert.equal(throttles[0], 20, "the first step is cpu_throttle_initial");
  assert.ok(
    throttles.slice(0, -1).every((t, i) => i === 0 || t > throttles[i - 1]),
    `${throttles}`,
  );
  assert.equal(throttles.at(-1), 0, "the throttle ends with the migration");
  assert.equal(await dst.incomingFinal(), "completed");
  assert.equal(await ramDigest(dst.guest), await ramDigest(guest), "RAM equal");
});

Deno.test("the stall reports through the same mechanism: stall_action switchover before the deadline, with its downtime", async () => {
  const { src, dst, uri, guest } = await pair({
    on_timeout: "cancel",
    completion_timeout_ms: 600_000,
    stall_windows: 15,
    stall_action: "switchover",
  });
  await using _s = src;
  await using _d = dst;
  const info = await migrate(src, uri);
  assert.equal(info.status, "completed", JSON.stringify(info));
  assert.deepEqual(codes(info), ["stalled-switchover", "forced-switchover-downtime"]);
  assert.match(info.warnings[1].message, /forced by the stall cost \d+ ms/);
  assert.equal(await ramDigest(dst.guest), await ramDigest(guest), "RAM equal");
});
