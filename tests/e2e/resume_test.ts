/**
 * Resuming an interrupted pre-copy between two real ferries (issue 19): the fault
 * proxy cuts a live migration of a guest that keeps writing; both sides wait in
 * `interrupted`, the operator resumes them through the API, and the migration
 * completes byte for byte, sending again only what the destination lacked.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { FaultProxy } from "../../testing/fault_proxy.ts";
import {
  destinationFinal,
  FINAL,
  setParams,
  sourceFinal,
  startDestination,
  startMigration,
} from "../helpers/ferries.ts";

Deno.test("e2e resume: a cut mid-RAM leaves both ferries interrupted; resumed through the API, the migration completes with equal RAM and says what it saved", async () => {
  await using src = await FerryProcess.start([
    "--ram",
    "32M",
    "--fill",
    "random",
    "--workload",
    "ab:rate=4M,range=8M",
  ]);
  await using dst = await startDestination("32M");
  await setParams(src, { max_bandwidth: 16_000_000, downtime_limit: 300 });
  await using proxy = FaultProxy.start(dst.incoming!, { cutAt: 12_000_000 });
  await startMigration(src, proxy.address);
  const interrupted = await src.waitFor(
    "/migrations/current",
    (b) => b.status === "interrupted" || FINAL.includes(b.status),
  );
  assert.equal(interrupted.status, "interrupted", JSON.stringify(interrupted));
  assert.equal(interrupted.resume.interruptions, 1);
  assert.ok(interrupted.resume.grace_left > 0);
  assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
  const held = await dst.waitFor(
    "/migrations/incoming",
    (b) => b.status === "interrupted" || FINAL.includes(b.status),
  );
  assert.equal(held.status, "interrupted", JSON.stringify(held));
  assert.ok(held.resume.pages_held > 2000, JSON.stringify(held.resume));
  // A partial guest cannot start while it waits.
  assert.equal((await dst.api("POST", "/vm/start")).status, 409);
  // The source cannot resume before the destination listens again: it stays interrupted.
  const early = await src.api("POST", "/migrations/current/resume", { uri: proxy.address });
  assert.equal(early.status, 409, JSON.stringify(early.body));
  assert.equal(early.body.error.code, "resume-refused");
  const listening = await dst.api("POST", "/migrations/incoming/resume", {
    uri: "tcp:127.0.0.1:0",
  });
  assert.equal(listening.status, 202, JSON.stringify(listening.body));
  await using relay = FaultProxy.start(listening.body.address);
  const resumed = await src.api("POST", "/migrations/current/resume", { uri: relay.address });
  assert.equal(resumed.status, 202, JSON.stringify(resumed.body));
  const info = await sourceFinal(src, 120_000);
  assert.equal(info.status, "completed", JSON.stringify(info));
  const incoming = await destinationFinal(dst);
  assert.equal(incoming.status, "completed", JSON.stringify(incoming));
  const a = (await src.api("GET", "/vm/ram/digest")).body;
  const b = (await dst.api("GET", "/vm/ram/digest")).body;
  assert.equal(b.sha256, a.sha256, "destination RAM equals source RAM");
  assert.equal(info.resume.resumes, 1);
  assert.equal(info.resume.bytes_saved, info.resume.pages_held * 4096);
  assert.ok(info.resume.pages_held > 2000, JSON.stringify(info.resume));
  assert.ok(
    relay.forwarded < 32 << 20,
    `after resuming ${relay.forwarded} bytes: less than the whole RAM again`,
  );
  const codes = info.warnings.map((w: { code: string }) => w.code);
  assert.ok(codes.includes("migration-interrupted") && codes.includes("migration-resumed"), codes);
});
