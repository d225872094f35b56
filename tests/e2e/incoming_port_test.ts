/**
 * The incoming port of a real destination belongs to the real source: a client
 * that sends garbage or nothing first is dropped and the destination keeps
 * listening; once the stream started, another connection is refused without
 * disturbing it.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import {
  destinationFinal,
  setParams,
  sourceFinal,
  startDestination,
  startMigration,
} from "../helpers/ferries.ts";

function portOf(uri: string): number {
  return Number(/:(\d+)$/.exec(uri)![1]);
}

Deno.test("incoming port: garbage and silent clients are dropped, the source that comes after them migrates", async () => {
  await using src = await FerryProcess.start(["--ram", "16M", "--fill", "random"]);
  await using dst = await startDestination("16M");
  const port = portOf(dst.incoming!);
  const junk = await Deno.connect({ hostname: "127.0.0.1", port });
  await junk.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  const silent = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    // The garbage is judged at once; the destination is still armed.
    await dst.waitFor("/migrations/incoming", (b) => (b.refused_peers ?? 0) >= 1, 10_000);
    assert.equal((await dst.api("GET", "/migrations/incoming")).body.status, "listening");
    await setParams(src, { max_bandwidth: 10_000_000_000, downtime_limit: 300 });
    await startMigration(src, dst.incoming!);
    assert.equal((await sourceFinal(src)).status, "completed");
    const incoming = await destinationFinal(dst);
    assert.equal(incoming.status, "completed", JSON.stringify(incoming));
    assert.equal(incoming.refused_peers, 2, "the silent client was dropped once the stream began");
    const a = (await src.api("GET", "/vm/ram/digest")).body;
    const b = (await dst.api("GET", "/vm/ram/digest")).body;
    assert.equal(b.sha256, a.sha256);
  } finally {
    junk.close();
    silent.close();
  }
});

Deno.test("incoming port: a second connection during a migration is refused and the migration completes", async () => {
  await using src = await FerryProcess.start(["--ram", "64M", "--fill", "random"]);
  await using dst = await startDestination("64M");
  const port = portOf(dst.incoming!);
  // Slow enough to still be loading when the intruder knocks.
  await setParams(src, { max_bandwidth: 40_000_000, downtime_limit: 300 });
  await startMigration(src, dst.incoming!);
  // Once the stream started (whether it is still loading or already done) the port is closed.
  await dst.waitFor("/migrations/incoming", (b) => b.status !== "listening", 10_000);
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port }),
    Deno.errors.ConnectionRefused,
  );
  await setParams(src, { max_bandwidth: 10_000_000_000 });
  assert.equal((await sourceFinal(src)).status, "completed");
  assert.equal((await destinationFinal(dst)).status, "completed");
});
