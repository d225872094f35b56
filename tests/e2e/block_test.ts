/**
 * Block migration end to end with real ferries: blk (idle guest, guest writing its
 * disk), inc against a shared base, zero_blocks on a sparse image, and a cancelled
 * block migration leaving the destination image marked incomplete.
 */
import assert from "node:assert/strict";
import { type FerryClient, FerryProcess } from "../../testing/ferry_process.ts";
import {
  destinationFinal,
  setParams,
  sourceFinal,
  startDestination,
  UNLIMITED,
} from "../helpers/ferries.ts";

const MIB = 1 << 20;

/** Writes pseudo-random data into the listed 1 MiB chunks of a (sparse) image of `size`. */
async function makeImage(path: string, size: number, chunks: readonly number[], seed = 1) {
  using file = await Deno.open(path, { create: true, write: true, truncate: true });
  await file.truncate(size);
  const data = new Uint8Array(MIB);
  for (const c of chunks) {
    let x = (seed * 7919 + c * 104729) >>> 0 || 1;
    for (let i = 0; i < MIB; i++) {
      x ^= x << 13, x ^= x >>> 17, x ^= x << 5;
      data[i] = x;
    }
    await file.seek(c * MIB, Deno.SeekMode.Start);
    let off = 0;
    while (off < MIB) off += await file.write(data.subarray(off));
  }
}

// deno-lint-ignore no-explicit-any
async function diskDigest(f: FerryClient): Promise<any> {
  const res = await f.api("GET", "/vm/disk/digest");
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

/** Migrates with blk/inc; checks both the RAM and the disk digests agree. */
async function blockMigrate(
  src: FerryClient,
  dst: FerryClient,
  opts: { blk?: boolean; inc?: boolean },
  params: Record<string, number> = { max_bandwidth: UNLIMITED, downtime_limit: 300 },
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  await setParams(src, params);
  const started = await src.api("POST", "/migrations", { uri: dst.incoming, ...opts });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const info = await sourceFinal(src, 120_000);
  assert.equal(info.status, "completed", JSON.stringify(info));
  const incoming = await destinationFinal(dst);
  assert.equal(incoming.status, "completed", JSON.stringify(incoming));
  const a = (await src.api("GET", "/vm/ram/digest")).body;
  const b = (await dst.api("GET", "/vm/ram/digest")).body;
  assert.equal(b.sha256, a.sha256, "destination RAM equals source RAM");
  const da = await diskDigest(src);
  const db = await diskDigest(dst);
  assert.equal(da.run_state, "postmigrate");
  assert.equal(db.incomplete, false, "the destination image is complete");
  assert.equal(db.sha256, da.sha256, "destination disk equals source disk");
  assert.equal(info.disk.remaining, 0);
  assert.equal(info.disk.total, da.size);
  return info;
}

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "ferry-e2e-disk-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test("blk with an idle guest copies the disk: digests equal, disk stats complete", async () => {
  await withDir(async (dir) => {
    await makeImage(`${dir}/src.img`, 16 * MIB, [0, 3, 4, 15]);
    await using src = await FerryProcess.start(["--ram", "32M", "--disk", `${dir}/src.img`]);
    await using dst = await startDestination("32M", "tcp", [
      "--disk",
      `${dir}/dst.img`,
      "--disk-size",
      "16M",
    ]);
    const before = await diskDigest(src);
    const info = await blockMigrate(src, dst, { blk: true });
    assert.ok(info.disk.transferred >= 16 * MIB, JSON.stringify(info.disk));
    assert.equal((await diskDigest(src)).sha256, before.sha256, "the source image is untouched");
  });
});

Deno.test("blk with a guest writing its disk during the migration converges and the digests are equal", async () => {
  await withDir(async (dir) => {
    await using src = await FerryProcess.start([
      "--ram",
      "32M",
      "--workload",
      "random:rate=1M,disk=4M",
      "--disk",
      `${dir}/src.img`,
      "--disk-size",
      "32M",
    ]);
    await using dst = await startDestination("32M", "tcp", [
      "--disk",
      `${dir}/dst.img`,
      "--disk-size",
      "32M",
    ]);
    // Let the guest write for a while first (64 ops, each after 16 KiB of disk
    // writes), then migrate at 24 MiB/s (over a second).
    await src.waitFor("/vm", (b) => b.ops >= 64);
    await setParams(src, { max_bandwidth: 24 * MIB, downtime_limit: 300 });
    const started = await src.api("POST", "/migrations", { uri: dst.incoming, blk: true });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const active = await src.waitFor(
      "/migrations/current",
      (b) => b.status !== "setup" && b.disk !== undefined,
    );
    assert.equal(active.disk.total, 32 * MIB);
    await setParams(src, { max_bandwidth: UNLIMITED });
    const info = await sourceFinal(src, 120_000);
    assert.equal(info.status, "completed", JSON.stringify(info));
    assert.equal((await destinationFinal(dst)).status, "completed");
    // The guest kept writing: more than the image went over the wire.
    assert.ok(info.disk.transferred > 32 * MIB, JSON.stringify(info.disk));
    const da = await diskDigest(src);
    const db = await diskDigest(dst);
    assert.equal(db.sha256, da.sha256, "destination disk equals source disk");
    assert.equal(db.incomplete, false);
  });
});

Deno.test("inc against a shared base sends only the chunks written since the base", async () => {
  await withDir(async (dir) => {
    await makeImage(`${dir}/src.img`, 64 * MIB, Array.from({ length: 64 }, (_, i) => i));
    await Deno.copyFile(`${dir}/src.img`, `${dir}/dst.img`); // the shared base
    await Deno.copyFile(`${dir}/src.img`, `${dir}/base.img`); // to compare with afterwards
    await using src = await FerryProcess.start([
      "--ram",
      "32M",
      "--workload",
      "random:rate=64K,disk=64K",
      "--disk",
      `${dir}/src.img`,
    ]);
    await using dst = await startDestination("32M", "tcp", ["--disk", `${dir}/dst.img`]);
    // A few ops, each after a 4 KiB disk write: the guest changes a few chunks. Then
    // it stops, so the chunks written since the base are known before the migration:
    // exactly those go over the wire (plus a few bytes of framing).
    await src.waitFor("/vm", (b) => b.ops >= 5);
    assert.equal((await src.api("POST", "/vm/stop")).status, 200);
    const written = await chunksDiffering(`${dir}/src.img`, `${dir}/base.img`);
    assert.ok(written >= 1 && written < 32, `${written} chunks written`);
    const info = await blockMigrate(src, dst, { inc: true });
    assert.ok(info.disk.transferred >= written * MIB, JSON.stringify(info.disk));
    assert.ok(
      info.disk.transferred < (written + 1) * MIB,
      `inc sent ${info.disk.transferred} bytes`,
    );
  });
});

/** How many 1 MiB chunks of two equally long images differ. */
async function chunksDiffering(a: string, b: string): Promise<number> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  assert.equal(x.length, y.length);
  let n = 0;
  for (let off = 0; off < x.length; off += MIB) {
    for (let i = off; i < off + MIB; i++) {
      if (x[i] !== y[i]) {
        n++;
        break;
      }
    }
  }
  return n;
}

Deno.test("zero_blocks sends the empty chunks of a sparse image as ZERO_BLOCK records", async () => {
  await withDir(async (dir) => {
    const sent: Record<string, number> = {};
    for (const zero of [false, true]) {
      const name = zero ? "zero" : "plain";
      await makeImage(`${dir}/${name}-src.img`, 32 * MIB, [1, 30]);
      await using src = await FerryProcess.start([
        "--ram",
        "32M",
        "--disk",
        `${dir}/${name}-src.img`,
      ]);
      await using dst = await startDestination("32M", "tcp", [
        "--disk",
        `${dir}/${name}-dst.img`,
        "--disk-size",
        "32M",
      ]);
      if (zero) {
        const caps = await src.api("PUT", "/migrations/capabilities", { zero_blocks: true });
        assert.equal(caps.status, 200, JSON.stringify(caps.body));
      }
      sent[name] = (await blockMigrate(src, dst, { blk: true })).disk.transferred;
    }
    assert.ok(sent.plain >= 32 * MIB, JSON.stringify(sent));
    assert.ok(sent.zero < 3 * MIB, JSON.stringify(sent));
  });
});

Deno.test("a cancelled block migration leaves the source image untouched and the destination image marked incomplete", async () => {
  await withDir(async (dir) => {
    await makeImage(`${dir}/src.img`, 64 * MIB, Array.from({ length: 64 }, (_, i) => i));
    await using src = await FerryProcess.start(["--ram", "32M", "--disk", `${dir}/src.img`]);
    await using dst = await startDestination("32M", "tcp", [
      "--disk",
      `${dir}/dst.img`,
      "--disk-size",
      "64M",
    ]);
    const before = await diskDigest(src);
    await setParams(src, { max_bandwidth: 8 * MIB });
    const started = await src.api("POST", "/migrations", { uri: dst.incoming, blk: true });
    assert.equal(started.status, 202);
    await dst.waitFor("/migrations/incoming", (b) => b.bytes_received > 2 * MIB);
    assert.equal((await src.api("DELETE", "/migrations/current")).status, 202);
    const info = await sourceFinal(src);
    assert.equal(info.status, "cancelled");
    assert.equal((await destinationFinal(dst)).status, "failed");
    const after = await diskDigest(src);
    assert.equal(after.sha256, before.sha256, "the source image is untouched");
    assert.equal(after.incomplete, false);
    assert.equal((await diskDigest(dst)).incomplete, true);
    await Deno.stat(`${dir}/dst.img.ferry-incomplete`);
    const start = await dst.api("POST", "/vm/start");
    assert.equal(start.status, 409, JSON.stringify(start.body));
    assert.equal(start.body.error.code, "guest-incomplete");
    assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
  });
});

Deno.test("blk to a ferry without --disk is refused at the source", async () => {
  await using src = await FerryProcess.start(["--ram", "32M"]);
  const res = await src.api("POST", "/migrations", { uri: "tcp:127.0.0.1:1", blk: true });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "capability-unsupported");
});
