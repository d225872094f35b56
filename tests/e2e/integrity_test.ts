/**
 * End-to-end integrity (the `verify` capability, on by default): a proxy between
 * two real ferries flips one byte of the stream at a seeded offset. No run may
 * end `completed` with RAM that differs from the source's; a damaged stream fails
 * both sides, the source's guest runs on, and when the damage is in page content
 * both sides say which block and page.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { FaultProxy } from "../../testing/fault_proxy.ts";
import {
  assertDestinationFailed,
  assertSourceIntact,
  destinationFinal,
  rearm,
  setParams,
  sourceFinal,
  startDestination,
  startMigration,
  UNLIMITED,
} from "../helpers/ferries.ts";
import { rng } from "../helpers/rng.ts";

const RAM = "64M";
const RAM_BYTES = 64 << 20;
/** Seeded flips in CI (the soak in BENCHMARKS.md runs many more). */
const FLIPS = 20;

Deno.test("integrity: 20 seeded one-byte flips of a live stream never end completed with different RAM; damaged pages are named on both sides", async () => {
  await using src = await FerryProcess.start([
    "--ram",
    RAM,
    "--fill",
    "random",
    "--workload",
    "random:rate=20M",
  ]);
  await using dst = await startDestination(RAM);
  await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 300 });
  const random = rng(0x5eed);
  let damaged = 0;
  let namedPages = 0;
  for (let i = 0; i < FLIPS; i++) {
    // Mostly inside the first copy of RAM (page content), some in its first bytes.
    const at = i < 3 ? 8 + Math.floor(random() * 200) : 64 + Math.floor(random() * RAM_BYTES);
    const mask = 1 << Math.floor(random() * 8);
    await using proxy = FaultProxy.start(dst.incoming!, { flipAt: at, flipMask: mask });
    await startMigration(src, proxy.address);
    const out = await sourceFinal(src);
    const incoming = await destinationFinal(dst);
    const what = `flip of byte ${at} (mask 0x${mask.toString(16)})`;
    assert.ok(proxy.flipped, `${what}: the proxy flipped it`);
    if (out.status === "completed") {
      // A flip whose effect was overwritten later (the page was sent again) is harmless.
      assert.equal(incoming.status, "completed", `${what}: ${JSON.stringify(incoming)}`);
      const a = (await src.api("GET", "/vm/ram/digest")).body;
      const b = (await dst.api("GET", "/vm/ram/digest")).body;
      assert.equal(b.sha256, a.sha256, `${what}: completed, so RAM must be equal`);
      assert.equal((await src.api("POST", "/vm/start")).status, 200);
      await rearm(dst);
      continue;
    }
    damaged++;
    assert.equal(out.status, "failed", `${what}: ${JSON.stringify(out)}`);
    await assertSourceIntact(src);
    const failed = await assertDestinationFailed(dst); // re-arms it
    // Whatever the destination found wrong, the source reports the destination's own words.
    assert.ok(
      out.error_desc.includes(failed.error_desc),
      `${what}: source says "${out.error_desc}", destination "${failed.error_desc}"`,
    );
    const named =
      /RAM block "pc\.ram" page 0x([0-9a-f]+) \(offset 0x[0-9a-f]+\) holds other content/
        .exec(failed.error_desc);
    if (named) {
      namedPages++;
      // The source reports the destination's own reason.
      assert.ok(out.error_desc.includes(named[0]), `${what}: source says ${out.error_desc}`);
      // A flip at stream byte `at` lies in guest page (at - header) / (8 + 4096).
      const page = parseInt(named[1], 16);
      assert.ok(page < RAM_BYTES / 4096, `${what}: page 0x${page.toString(16)} is inside RAM`);
    }
  }
  assert.ok(damaged >= FLIPS / 2, `${damaged} of ${FLIPS} flips failed the migration`);
  assert.ok(namedPages >= 1, "flips in page content are caught by the digests and named");
});

Deno.test("integrity: a destination with verify refuses a source without it, before the guest starts; with verify off on both ends it completes", async () => {
  await using src = await FerryProcess.start(["--ram", "16M", "--fill", "random"]);
  await using dst = await startDestination("16M");
  await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 300 });
  assert.equal(
    (await src.api("PUT", "/migrations/capabilities", { verify: false })).status,
    200,
  );
  await startMigration(src, dst.incoming!);
  const out = await sourceFinal(src);
  assert.equal(out.status, "failed", JSON.stringify(out));
  assert.match(out.error_desc, /carries no integrity record/);
  const failed = await assertDestinationFailed(dst); // re-arms it (verify is read at arming)
  assert.match(failed.error_desc, /turn verify off on this destination/);
  // verify off on the destination too: the stream is accepted as QEMU would.
  await dst.api("DELETE", "/migrations/incoming");
  assert.equal(
    (await dst.api("PUT", "/migrations/capabilities", { verify: false })).status,
    200,
  );
  const address = await rearm(dst);
  await startMigration(src, address);
  assert.equal((await sourceFinal(src)).status, "completed");
  assert.equal((await destinationFinal(dst)).status, "completed");
});
