/**
 * Compression (`compress_method` zstd and lz4) and same-page references
 * (`page_refs`) between real ferries on real sockets: a source whose RAM is an
 * image of text, repeated and zero pages, dirtied while it migrates; the
 * destination's RAM must equal the source's (and the `verify` integrity check,
 * on by default, must pass). Both ends must agree: a destination set otherwise
 * fails the migration with a reason that names the setting.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import {
  destinationFinal,
  migrateAndCompare,
  setParams,
  sourceFinal,
  startDestination,
  startMigration,
  UNLIMITED,
} from "../helpers/ferries.ts";

const RAM = "32M";
const PAGES = (32 << 20) / 4096;

/**
 * A RAM image like a guest's: a third text pages (compressible), a quarter copies
 * of 64 distinct pages (duplicates), some random pages, the rest zero.
 */
async function writeImage(): Promise<string> {
  const bytes = new Uint8Array(PAGES * 4096);
  let x = 0x2545f491;
  const next = () => (x ^= x << 13, x ^= x >>> 17, x ^= x << 5, x >>> 0);
  const words = ["ferry", "moves", "guest", "pages", "over", "sockets", "\n", "QEMU", "savevm"];
  for (let p = 0; p < PAGES; p++) {
    const page = bytes.subarray(p * 4096, (p + 1) * 4096);
    const kind = p % 12;
    if (kind < 4) {
      let at = 0;
      while (at < 4096) {
        const w = new TextEncoder().encode(words[next() % words.length] + " ");
        page.set(w.subarray(0, 4096 - at), at);
        at += w.length;
      }
    } else if (kind < 7) {
      page.set(bytes.subarray((p % 64) * 4096, (p % 64) * 4096 + 4096)); // a copy of a text page
    } else if (kind < 8) {
      for (let i = 0; i < 4096; i += 4) new DataView(page.buffer, p * 4096).setUint32(i, next());
    }
  }
  const path = await Deno.makeTempFile({ prefix: "ferry-image-", suffix: ".img" });
  await Deno.writeFile(path, bytes);
  return path;
}

async function pair(path: string, dstParams: Record<string, unknown>, dstCaps = {}) {
  const src = await FerryProcess.start([
    "--ram",
    RAM,
    "--fill",
    `image:${path}`,
    "--workload",
    "random:rate=4M",
  ]);
  const dst = await startDestination(RAM);
  assert.equal((await dst.api("PATCH", "/migrations/parameters", dstParams)).status, 200);
  if (Object.keys(dstCaps).length > 0) {
    // Capabilities cannot change while armed: disarm, set, arm again.
    await dst.api("DELETE", "/migrations/incoming");
    assert.equal((await dst.api("PUT", "/migrations/capabilities", dstCaps)).status, 200);
    const res = await dst.api("POST", "/migrations/incoming", { uri: "tcp:127.0.0.1:0" });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    dst.incoming = res.body.address;
  }
  return { src, dst };
}

for (const method of ["zstd", "lz4"] as const) {
  Deno.test(`e2e compression: ${method} on both ends moves a dirtying guest with equal RAM`, async () => {
    const path = await writeImage();
    try {
      const { src, dst } = await pair(path, { compress_method: method });
      await using _s = src;
      await using _d = dst;
      await src.api("PATCH", "/migrations/parameters", { compress_method: method });
      const info = await migrateAndCompare(src, dst);
      // The first window always compresses (the gate measures the compressor there).
      assert.equal(info.compression.method, method);
      assert.ok(info.compression.pages > 0, JSON.stringify(info.compression));
      assert.ok(info.compression.bytes < info.compression.raw_bytes);
      const incoming = (await dst.api("GET", "/migrations/incoming")).body;
      assert.equal(incoming.pages.compressed, info.compression.pages);
    } finally {
      await Deno.remove(path);
    }
  });
}

Deno.test("e2e page_refs: repeated pages go as references, with zstd too, and RAM is equal", async () => {
  const path = await writeImage();
  try {
    const { src, dst } = await pair(path, { compress_method: "zstd" }, { page_refs: true });
    await using _s = src;
    await using _d = dst;
    assert.equal(
      (await src.api("PUT", "/migrations/capabilities", { page_refs: true })).status,
      200,
    );
    await src.api("PATCH", "/migrations/parameters", { compress_method: "zstd" });
    const info = await migrateAndCompare(src, dst);
    // A quarter of the pages copy one of the first 64 (the count depends on what the
    // guest dirties meanwhile; tests/engine/engine_test.ts counts them exactly).
    assert.ok(info.page_refs.pages > 0, JSON.stringify(info.page_refs));
    const incoming = (await dst.api("GET", "/migrations/incoming")).body;
    assert.equal(incoming.pages.refs, info.page_refs.pages);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("e2e compression: a destination set to another compress_method fails the migration, saying so on both sides", async () => {
  const path = await writeImage();
  try {
    const { src, dst } = await pair(path, { compress_method: "none" });
    await using _s = src;
    await using _d = dst;
    await setParams(src, { max_bandwidth: UNLIMITED });
    await src.api("PATCH", "/migrations/parameters", { compress_method: "lz4" });
    await startMigration(src, dst.incoming!);
    const out = await sourceFinal(src);
    assert.equal(out.status, "failed");
    assert.match(out.error_desc, /lz4-compressed pages but compress_method is none/);
    const incoming = await destinationFinal(dst);
    assert.equal(incoming.status, "failed");
    assert.match(incoming.error_desc, /set the same compress_method on both ends/);
    assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("e2e page_refs: a destination without page_refs fails the migration, naming the capability", async () => {
  const path = await writeImage();
  try {
    const { src, dst } = await pair(path, {});
    await using _s = src;
    await using _d = dst;
    await setParams(src, { max_bandwidth: UNLIMITED });
    await src.api("PUT", "/migrations/capabilities", { page_refs: true });
    await startMigration(src, dst.incoming!);
    const out = await sourceFinal(src);
    assert.equal(out.status, "failed");
    assert.match(out.error_desc, /page_refs is off on this destination/);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("e2e: xbzrle with compression or page_refs is refused at once (400)", async () => {
  await using src = await FerryProcess.start(["--ram", "8M"]);
  await src.api("PUT", "/migrations/capabilities", { xbzrle: true });
  await src.api("PATCH", "/migrations/parameters", { compress_method: "zstd" });
  const res = await src.api("POST", "/migrations", { uri: "tcp:127.0.0.1:9" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "capability-unsupported");
  assert.match(res.body.error.message, /both xbzrle and compress_method zstd/);
});

Deno.test("e2e compression: a zstd file: snapshot restores at start with --param compress_method=zstd; without it the restore fails naming the parameter", async () => {
  const path = await writeImage();
  const snapshot = await Deno.makeTempFile({ prefix: "ferry-zstd-", suffix: ".ferry" });
  try {
    await using src = await FerryProcess.start(["--ram", RAM, "--fill", `image:${path}`]);
    await src.api("PATCH", "/migrations/parameters", { compress_method: "zstd" });
    await startMigration(src, `file:${snapshot}`);
    const saved = await sourceFinal(src);
    assert.equal(saved.status, "completed", JSON.stringify(saved));
    assert.ok(saved.compression.pages > 0, JSON.stringify(saved.compression));
    const want = (await src.api("GET", "/vm/ram/digest")).body.sha256;

    await using good = await FerryProcess.start([
      "--ram",
      RAM,
      "--no-autostart",
      "--param",
      "compress_method=zstd",
      "--incoming",
      `file:${snapshot}`,
    ]);
    assert.equal((await destinationFinal(good)).status, "completed");
    assert.equal((await good.api("GET", "/vm/ram/digest")).body.sha256, want);

    await using bad = await FerryProcess.start([
      "--ram",
      RAM,
      "--no-autostart",
      "--incoming",
      `file:${snapshot}`,
    ]);
    const failed = await destinationFinal(bad);
    assert.equal(failed.status, "failed");
    assert.match(failed.error_desc, /compress_method/);
  } finally {
    await Deno.remove(path);
    await Deno.remove(snapshot);
  }
});
