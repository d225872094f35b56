/**
 * Fault injection between two real ferries (issue 6): a proxy that cuts or stalls
 * the stream at chosen byte offsets, SIGKILL of either side mid-stream, and
 * cancel in every state. After every fault the source's migration is `failed` or
 * `cancelled` with a reason, its guest runs again with its RAM satisfying the ab
 * invariant, the destination is `failed`, refuses to start its partial guest and
 * can be armed again, and a second migration succeeds byte for byte.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { type FaultPlan, FaultProxy } from "../../testing/fault_proxy.ts";
import {
  assertDestinationFailed,
  assertSourceIntact,
  cleanupUri,
  destinationFinal,
  migrateAndCompare,
  rearm,
  setParams,
  sourceFinal,
  startDestination,
  startMigration,
  UNLIMITED,
} from "../helpers/ferries.ts";

const RAM = "32M";
/** The ab guest's range: 8 MiB of 4 KiB pages whose byte 0 keeps increasing. */
const AB_RANGE = 8 << 20;
const AB = ["--workload", `ab:rate=16M,range=8M`];
/** A short progress timeout for the tests that wait for one. */
const SHORT = 300;

function abSource(extra: string[] = []): Promise<FerryProcess> {
  return FerryProcess.start(["--ram", RAM, ...AB, ...extra]);
}

/** Lets a just-started ab guest dirty its whole range (one op per page), so the stream carries real pages. */
async function warmUp(ab: FerryProcess): Promise<void> {
  await ab.waitFor("/vm", (b) => b.ops >= AB_RANGE / 4096);
}

Deno.test("faults: with resume_grace 0, a cut at offsets in the header, mid-RAM and when the destination answers fails both sides; then a migration succeeds", async () => {
  await using src = await abSource();
  await using dst = await startDestination(RAM);
  await warmUp(src);
  // Resuming is off (resume_test.ts and the resume test below cover it): a cut fails.
  await setParams(dst, { resume_grace: 0 });
  const cases: { what: string; plan: FaultPlan }[] = [
    { what: "inside the header (byte 5)", plan: { cutAt: 5 } },
    { what: "right after the header and configuration (byte 21)", plan: { cutAt: 21 } },
    { what: "mid-RAM (byte 2,000,000)", plan: { cutAt: 2_000_000 } },
    { what: "mid-RAM, inside a page (byte 4,321,001)", plan: { cutAt: 4_321_001 } },
    {
      what: "after the whole stream, before the destination's answer",
      plan: { cutOnReturn: true },
    },
  ];
  for (const { what, plan } of cases) {
    await using proxy = FaultProxy.start(dst.incoming!, plan);
    await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 300, resume_grace: 0 });
    await startMigration(src, proxy.address);
    const info = await sourceFinal(src);
    assert.equal(info.status, "failed", `${what}: ${JSON.stringify(info)}`);
    assert.ok(info.error_desc, `${what}: the source says why`);
    assert.ok(proxy.wasCut, `${what}: the proxy cut the stream`);
    await assertSourceIntact(src, AB_RANGE);
    if ((plan.cutAt ?? Infinity) < 8) {
      // Cut inside the stream header: the destination drops that connection and
      // goes on listening for the real source.
      const info = await dst.waitFor("/migrations/incoming", (b) => b.refused_peers >= 1);
      assert.equal(info.status, "listening", what);
      await proxy.close();
      continue;
    }
    const failed = await assertDestinationFailed(dst); // also re-arms it
    if (plan.cutOnReturn) {
      assert.match(failed.error_desc, /did not commit the switchover/, what);
    }
    await proxy.close();
  }
  // The same destination, armed again, takes a whole migration byte for byte.
  await migrateAndCompare(src, dst);
  await cleanupUri(dst.incoming);
});

Deno.test("faults: cuts in the last bytes of the stream fail both sides; a cut inside the commit leaves both guests stopped, never both running", async () => {
  await using src = await abSource();
  await using dst = await startDestination(RAM);
  // A cut that withholds the stop-and-copy's first section header looks like a cut in
  // pre-copy to the destination, which would wait to resume (resume_test.ts): not here.
  await setParams(dst, { resume_grace: 0 });
  await warmUp(src);
  await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 300 });
  for (
    const [what, cutBeforeEnd] of [
      ["inside the last RAM page", 5000],
      ["inside the vmdescription", 20],
      ["one byte short of the stream", 1],
    ] as const
  ) {
    await using proxy = FaultProxy.start(dst.incoming!, { cutBeforeEnd });
    await startMigration(src, proxy.address);
    const info = await sourceFinal(src);
    assert.equal(info.status, "failed", `${what}: ${JSON.stringify(info)}`);
    assert.match(
      info.error_desc,
      /without confirming|reset|closed|broken pipe/,
      `${what}: ${info.error_desc}`,
    );
    await assertSourceIntact(src, AB_RANGE);
    const failed = await assertDestinationFailed(dst); // re-armed
    assert.match(failed.error_desc, /truncated/, what);
    await proxy.close();
  }
  // Cut inside the commit: the destination has loaded everything but never learns
  // that the source let go; the source did. Neither guest runs; the source's RAM is
  // intact and POST /vm/start on the source resumes it.
  {
    await using proxy = FaultProxy.start(dst.incoming!, { cutAfterReturn: 2 });
    await startMigration(src, proxy.address);
    const info = await sourceFinal(src);
    assert.equal(info.status, "completed", JSON.stringify(info));
    const incoming = await destinationFinal(dst);
    assert.equal(incoming.status, "failed");
    assert.match(incoming.error_desc, /did not commit the switchover/);
    assert.equal((await dst.api("GET", "/vm")).body.run_state, "inmigrate");
    assert.equal((await dst.api("POST", "/vm/start")).status, 409);
    assert.equal((await src.api("GET", "/vm")).body.run_state, "postmigrate");
    await proxy.close();
    assert.equal((await src.api("POST", "/vm/start")).status, 200);
    await assertSourceIntact(src, AB_RANGE);
  }
  await rearm(dst);
  await migrateAndCompare(src, dst);
});

Deno.test("faults: a stalled link fails both sides after progress_timeout; a silent peer is dropped and listening goes on", async () => {
  await using src = await abSource();
  await using dst = await startDestination(RAM);
  await warmUp(src);
  await setParams(src, { max_bandwidth: UNLIMITED, progress_timeout: SHORT });
  await setParams(dst, { progress_timeout: SHORT });
  {
    await using proxy = FaultProxy.start(dst.incoming!, { stallAt: 1_000_000 });
    await startMigration(src, proxy.address);
    const info = await sourceFinal(src);
    assert.equal(info.status, "failed", JSON.stringify(info));
    assert.match(info.error_desc, /progress_timeout is 300 ms/);
    assert.ok(proxy.wasStalled);
    await assertSourceIntact(src, AB_RANGE);
    const failed = await assertDestinationFailed(dst);
    assert.match(
      failed.error_desc,
      /progress_timeout is 300 ms\): no data arrived from the source/,
    );
    assert.equal(failed.bytes_received, 1_000_000);
  }
  {
    // A peer that connects and sends nothing is dropped after the header deadline
    // (at most progress_timeout); the destination goes on listening.
    const addr = /^tcp:127\.0\.0\.1:(\d+)$/.exec(dst.incoming!)!;
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: Number(addr[1]) });
    try {
      const info = await dst.waitFor("/migrations/incoming", (b) => b.refused_peers === 1);
      assert.equal(info.status, "listening");
      assert.equal(info.bytes_received, 0);
    } finally {
      silent.close();
    }
  }
  await setParams(src, { progress_timeout: 60_000 });
  await setParams(dst, { progress_timeout: 60_000 });
  await migrateAndCompare(src, dst);
});

Deno.test("faults: a throttled link is slow, not stalled: the migration completes under a short progress_timeout", async () => {
  await using src = await FerryProcess.start([
    "--ram",
    "8M",
    "--fill",
    "random",
    "--workload",
    "random:rate=256K",
  ]);
  await using dst = await startDestination("8M");
  await setParams(src, { progress_timeout: 2000 });
  await setParams(dst, { progress_timeout: 2000 });
  await using proxy = FaultProxy.start(dst.incoming!, { throttle: 8 << 20 });
  const info = await migrateAndCompare(src, dst, proxy.address);
  assert.ok(info.ram.transferred >= 8 << 20);
});

Deno.test("faults: SIGKILL of the destination mid-stream fails the source, whose guest runs on; a fresh destination then succeeds", async () => {
  await using src = await abSource();
  const dst = await startDestination(RAM);
  try {
    await warmUp(src);
    await setParams(src, { max_bandwidth: 8_000_000, progress_timeout: 5000, resume_grace: 0 });
    await startMigration(src, dst.incoming!);
    await dst.waitFor("/migrations/incoming", (b) => b.bytes_received > 1_000_000);
    await dst.kill("SIGKILL");
    const info = await sourceFinal(src);
    assert.equal(info.status, "failed", JSON.stringify(info));
    assert.ok(info.error_desc);
    await assertSourceIntact(src, AB_RANGE);
  } finally {
    await dst.kill("SIGKILL");
  }
  await using fresh = await startDestination(RAM);
  await migrateAndCompare(src, fresh);
});

Deno.test("faults: SIGKILL of the source mid-stream fails the destination, which never starts the partial guest and takes a new source", async () => {
  await using dst = await startDestination(RAM, "unix");
  await setParams(dst, { resume_grace: 0 }); // a source that died cannot resume
  const first = await abSource();
  try {
    await warmUp(first);
    await setParams(first, { max_bandwidth: 8_000_000 });
    await startMigration(first, dst.incoming!);
    await dst.waitFor("/migrations/incoming", (b) => b.bytes_received > 1_000_000);
  } finally {
    await first.kill("SIGKILL");
  }
  const failed = await assertDestinationFailed(dst, "unix");
  assert.match(failed.error_desc, /truncated|reset|closed/);
  await using second = await abSource();
  await warmUp(second);
  await migrateAndCompare(second, dst);
  await cleanupUri(dst.incoming);
});

Deno.test("faults: cancel in every state answers as QEMU's migrate_cancel (202 while it cancels, 200 no-op otherwise)", async () => {
  await using src = await abSource();
  await using dst = await startDestination(RAM);
  // A cancelled source looks like a cut to its destination: without resuming it fails.
  await setParams(dst, { resume_grace: 0 });
  await warmUp(src);
  const cancel = () => src.api("DELETE", "/migrations/current");

  // No migration yet: a no-op.
  let res = await cancel();
  assert.equal(res.status, 200);
  assert.equal(res.body.status, "none");

  // setup: a connect that is never answered (the proxy's accept queue is full).
  {
    await using held = FaultProxy.start(dst.incoming!);
    await held.holdConnects();
    await startMigration(src, held.address);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await src.api("GET", "/migrations/current")).body.status, "setup");
    res = await cancel();
    assert.equal(res.status, 202);
    assert.equal(res.body.status, "cancelling");
    const info = await sourceFinal(src);
    assert.equal(info.status, "cancelled");
    await assertSourceIntact(src, AB_RANGE);
    // cancelled: a no-op.
    res = await cancel();
    assert.equal(res.status, 200);
    assert.equal(res.body.status, "cancelled");
    // ... and the same unanswered connect with a short progress_timeout fails by itself.
    await setParams(src, { progress_timeout: SHORT });
    await startMigration(src, held.address);
    const timedOut = await sourceFinal(src);
    assert.equal(timedOut.status, "failed");
    assert.match(timedOut.error_desc, /progress_timeout is 300 ms/);
    await setParams(src, { progress_timeout: 60_000 });
    // failed: a no-op.
    res = await cancel();
    assert.equal(res.status, 200);
    assert.equal(res.body.status, "failed");
    await assertSourceIntact(src, AB_RANGE);
  }

  // active, then cancelling: two cancels at once.
  await setParams(src, { max_bandwidth: 4_000_000 });
  await startMigration(src, dst.incoming!);
  await src.waitFor("/migrations/current", (b) => b.status === "active" && b.ram.transferred > 0);
  const answers = await Promise.all([cancel(), cancel()]);
  assert.ok(answers.some((a) => a.status === 202), JSON.stringify(answers));
  for (const a of answers) {
    if (a.status === 202) assert.equal(a.body.status, "cancelling");
    else assert.deepEqual([a.status, a.body.status], [200, "cancelled"]);
  }
  assert.equal((await sourceFinal(src)).status, "cancelled");
  await assertSourceIntact(src, AB_RANGE);
  await assertDestinationFailed(dst); // re-armed

  // completed: a no-op that leaves the guest on the destination.
  await migrateAndCompare(src, dst);
  res = await cancel();
  assert.equal(res.status, 200);
  assert.equal(res.body.status, "completed");
  assert.equal((await src.api("GET", "/vm")).body.run_state, "postmigrate");
});
