/**
 * Convergence between two real ferries over a link whose round trip exceeds the
 * downtime limit (a proxy adding 20 ms each way, limit 30 ms): the migration of a
 * dirtying guest warns that the limit cannot be met and completes at the smallest
 * downtime it can reach, instead of iterating forever.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { FaultProxy } from "../../testing/fault_proxy.ts";
import {
  destinationFinal,
  setParams,
  sourceFinal,
  startDestination,
  startMigration,
  UNLIMITED,
} from "../helpers/ferries.ts";

Deno.test("convergence: a 40 ms round trip against a 30 ms limit, a guest dirtying 20 MB/s: warns, completes, RAM equal", async () => {
  await using src = await FerryProcess.start([
    "--ram",
    "64M",
    "--fill",
    "random",
    "--workload",
    "random:rate=20M",
  ]);
  await using dst = await startDestination("64M");
  await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 30 });
  await using proxy = FaultProxy.start(dst.incoming!, { delayMs: 20 });
  await startMigration(src, proxy.address);
  const out = await sourceFinal(src, 120_000);
  assert.equal(out.status, "completed", JSON.stringify(out));
  const codes = (out.warnings ?? []).map((w: { code: string }) => w.code);
  assert.ok(codes.includes("downtime-limit-unachievable"), JSON.stringify(out.warnings));
  assert.equal((await destinationFinal(dst)).status, "completed");
  const a = (await src.api("GET", "/vm/ram/digest")).body;
  const b = (await dst.api("GET", "/vm/ram/digest")).body;
  assert.equal(b.sha256, a.sha256);
});
