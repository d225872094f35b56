/**
 * The RAM saver's packed path: compressed runs and same-page references, each
 * loaded back by a RamLoader and compared byte for byte and digest for digest
 * (the plain paths are tested in ram_test.ts).
 */
import assert from "node:assert/strict";
import { StreamReader } from "../../../engine/format/reader.ts";
import { StreamWriter } from "../../../engine/format/writer.ts";
import type { Codec } from "../../../engine/format/compression.ts";
import { MigrationDigests } from "../../../engine/integrity.ts";
import { CompressionGate } from "../../../engine/compress_gate.ts";
import { RamLoader, RamSaver, type RamSaverOptions } from "../../../engine/sections/ram.ts";
import { PAGE_SIZE } from "../../../vm/ram.ts";
import { ramDigest, TestGuest } from "../../../testing/test_guest.ts";
import { pageData } from "../../../testing/stream_builder.ts";
import { BytesChannel, CaptureChannel } from "../../helpers/byte_channels.ts";

const never = () => false;

/** A compressible page: a line naming `seed`, repeated. */
function textPage(seed: number): Uint8Array {
  const line = new TextEncoder().encode(`line ${seed}: ferry keeps the guest's pages\n`);
  const out = new Uint8Array(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i++) out[i] = line[i % line.length];
  return out;
}

/** A source guest, its saver (with digests) and a destination loading what it sends. */
function pair(
  pages: number,
  options: RamSaverOptions,
  codec: Codec | "none" = "none",
  now: () => number = () => 0,
) {
  const blocks: [string, number][] = [["pc.ram", pages * PAGE_SIZE]];
  const guest = new TestGuest(blocks);
  const digests = new MigrationDigests(guest.blocks);
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 1 << 20);
  const saver = new RamSaver(guest.blocks, now, { ...options, digests });
  const dst = new TestGuest(blocks);
  dst.fillRandom(77); // stale RAM must never show through
  const dstDigests = new MigrationDigests(dst.blocks);
  const loader = new RamLoader(dst.blocks, undefined, dstDigests, Infinity, {
    compression: codec,
    pageRefs: options.pageRefs ?? false,
  });
  let payloads = 0;
  let reader: StreamReader | null = null;
  let consumed = 0;
  /** Loads every payload written so far into the destination. */
  const deliver = async () => {
    await w.drain();
    const bytes = ch.bytes();
    reader = new StreamReader(new BytesChannel(bytes.subarray(consumed)), 1 << 20);
    consumed = bytes.length;
    for (; payloads > 0; payloads--) await loader.load(reader, payloads === -1 ? "start" : "part");
  };
  return {
    guest,
    dst,
    saver,
    loader,
    /** START, then nothing delivered yet. */
    async setup() {
      await saver.setup(w);
      await w.drain();
      const r = new StreamReader(new BytesChannel(ch.bytes()), 1 << 20);
      consumed = ch.bytes().length;
      await loader.load(r, "start");
    },
    async iterate(stop: () => boolean = never) {
      await saver.iterate(w, stop);
      payloads++;
      await deliver();
    },
    async complete() {
      await saver.complete(w);
      payloads++;
      await deliver();
    },
    /** The destination equals the source, byte for byte and by the integrity record. */
    async same() {
      assert.equal(await ramDigest(dst), await ramDigest(guest));
      dstDigests.verify(digests.record());
    },
  };
}

function put(guest: TestGuest, page: number, data: Uint8Array) {
  guest.write(page * PAGE_SIZE, data);
}

for (const codec of ["zstd", "lz4"] as const) {
  Deno.test(`RamSaver with ${codec}: text pages go as compressed runs; zero and random pages as before`, async () => {
    const p = pair(128, { compress: { codec, level: 1, gate: new CompressionGate(true) } }, codec);
    for (let i = 0; i < 100; i++) put(p.guest, i, textPage(i));
    for (let i = 100; i < 110; i++) put(p.guest, i, pageData(i));
    p.guest.blocks[0].markTouched(120); // touched, zero: a ZERO record
    await p.setup();
    p.saver.sync();
    await p.iterate();
    await p.complete();
    await p.same();
    const cz = p.saver.stats.compression!;
    assert.equal(cz.method, codec);
    assert.ok(cz.pages >= 96, `${cz.pages} pages compressed`);
    assert.ok(cz.bytes * 4 < cz.rawBytes, `${cz.bytes} wire bytes for ${cz.rawBytes}`);
    assert.equal(p.loader.stats.compressedPages, cz.pages);
    assert.equal(p.saver.stats.duplicate, 18);
  });
}

Deno.test("RamSaver with compression: a run that does not shrink goes as PAGE records", async () => {
  const p = pair(
    64,
    { compress: { codec: "zstd", level: 1, gate: new CompressionGate(true) } },
    "zstd",
  );
  for (let i = 0; i < 64; i++) put(p.guest, i, pageData(i + 1));
  await p.setup();
  p.saver.sync();
  await p.iterate();
  await p.complete();
  await p.same();
  assert.equal(p.saver.stats.compression!.pages, 0);
  assert.equal(p.saver.stats.compression!.incompressible, 2);
  assert.equal(p.saver.stats.normal, 64);
});

Deno.test("RamSaver with compression: a window the gate skips sends PAGE records, but a sample", async () => {
  // A clock that moves 1 ms each time it is read: each run takes 1 ms to compress.
  let t = 0;
  const gate = new CompressionGate(true);
  const p = pair(128, { compress: { codec: "lz4", level: 1, gate } }, "lz4", () => t++);
  for (let i = 0; i < 128; i++) put(p.guest, i, textPage(i));
  await p.setup();
  p.saver.sync();
  let n = 0;
  await p.iterate(() => n++ >= 1); // one batch of 64 pages: both words compressed
  assert.equal(p.saver.stats.compression!.pages, 64);
  // 32 pages (131072 bytes) per ms: a link of 10^6 bytes per ms (1 GB/s) is faster.
  p.saver.windowEnded(1e6, Infinity);
  assert.equal(p.saver.stats.compression!.gate.active, false);
  assert.equal(p.saver.stats.compression!.gate.compressorRate, 32 * PAGE_SIZE);
  await p.iterate();
  // The first run of the window is compressed as a sample, the other goes plain.
  assert.equal(p.saver.stats.compression!.pages, 96);
  assert.equal(p.saver.stats.normal, 32);
  await p.complete();
  await p.same();
});

Deno.test("RamSaver with page_refs: a page equal to one already sent goes as a reference", async () => {
  const p = pair(96, { pageRefs: true });
  for (let i = 0; i < 96; i++) put(p.guest, i, pageData(i % 8));
  await p.setup();
  p.saver.sync();
  await p.iterate();
  await p.complete();
  await p.same();
  // The first word's 32 pages go with data (a page is a target only once written),
  // the 64 others refer to them.
  assert.equal(p.saver.stats.refPages, 64);
  assert.equal(p.saver.stats.normal, 32);
  assert.equal(p.loader.stats.refPages, 64);
});

Deno.test("RamSaver with page_refs: a page equal to a target rewritten since goes with data, a page equal to its new content refers", async () => {
  const p = pair(96, { pageRefs: true });
  put(p.guest, 1, pageData(1));
  put(p.guest, 40, pageData(1));
  await p.setup();
  p.saver.sync();
  await p.iterate();
  assert.equal(p.saver.stats.refPages, 1, "page 40 refers to page 1");
  // Page 1 changes; page 70 now holds page 1's old content, page 80 its new one.
  put(p.guest, 1, pageData(2));
  put(p.guest, 70, pageData(1));
  put(p.guest, 80, pageData(2));
  // Page 40 referred to page 1, which is dirty now: page 40 goes again too.
  assert.equal(p.saver.sync(), 4);
  await p.iterate();
  // 40: page 1 no longer holds its content (the bytes differ): data.
  // 70: refers to page 40, which went with data just before.
  // 80: page 1 went with its new content in this pass: a reference.
  assert.equal(p.saver.stats.refPages, 3);
  assert.equal(p.saver.stats.normal, 1 + 2);
  await p.complete();
  await p.same();
});

Deno.test("RamSaver with page_refs: a target dirty and not yet re-sent is never referenced", async () => {
  const p = pair(64, { pageRefs: true });
  put(p.guest, 40, pageData(5));
  await p.setup();
  p.saver.sync();
  await p.iterate();
  // Page 40 is rewritten with the same bytes: dirty, though equal to what went out.
  put(p.guest, 40, pageData(5));
  put(p.guest, 3, pageData(5));
  p.saver.sync();
  // Page 3 comes first in the pass, while page 40 is still dirty: it goes with
  // data, and page 40, equal to it, then refers to page 3.
  await p.iterate();
  assert.equal(p.saver.stats.normal, 2);
  assert.equal(p.saver.stats.refPages, 1);
  await p.complete();
  await p.same();
});

Deno.test("RamSaver with page_refs: a reference made while its target was being rewritten goes again once the target's dirty bit shows", async () => {
  const p = pair(64, { pageRefs: true });
  const block = p.guest.blocks[0];
  put(p.guest, 2, pageData(7)); // sent with content A
  await p.setup();
  p.saver.sync();
  await p.iterate();
  put(p.guest, 2, pageData(8)); // re-sent with content B: the index still has A → page 2
  p.saver.sync();
  await p.iterate();
  // A vCPU writes A back into page 2 but has not set its dirty bit yet; page 40 gets A.
  block.bytes.set(pageData(7), 2 * PAGE_SIZE);
  put(p.guest, 40, pageData(7));
  p.saver.sync();
  await p.iterate();
  assert.equal(p.saver.stats.refPages, 1, "page 40 referred to page 2 (which still holds B there)");
  assert.notDeepEqual(
    p.dst.blocks[0].bytes.slice(40 * PAGE_SIZE, 41 * PAGE_SIZE),
    pageData(7),
    "the destination copied what it holds at page 2",
  );
  // The dirty bit shows: the sync marks page 40 dirty again with page 2.
  block.markDirty(2);
  assert.equal(p.saver.sync(), 2);
  await p.complete();
  await p.same();
});

Deno.test("RamSaver with compression and page_refs: references reach into compressed runs", async () => {
  const p = pair(
    128,
    { compress: { codec: "zstd", level: 3, gate: new CompressionGate(true) }, pageRefs: true },
    "zstd",
  );
  for (let i = 0; i < 128; i++) put(p.guest, i, textPage(i % 40));
  await p.setup();
  p.saver.sync();
  await p.iterate();
  await p.complete();
  await p.same();
  assert.ok(p.saver.stats.refPages! >= 80, `${p.saver.stats.refPages} references`);
  assert.ok(p.saver.stats.compression!.pages >= 32);
});

Deno.test("RamSaver refuses compression or page_refs with XBZRLE", () => {
  const guest = new TestGuest([["pc.ram", 16 * PAGE_SIZE]]);
  for (const extra of [{ pageRefs: true }, { compress: { codec: "lz4" as const, level: 1 } }]) {
    assert.throws(
      () => new RamSaver(guest.blocks, () => 0, { xbzrleCacheSize: 1 << 20, ...extra }),
      /do not combine with XBZRLE/,
    );
  }
});

Deno.test("RamSaver with compression on: pending wire bytes are the dirty pages over the measured ratio, and the compressor's time counts as busy", () => {
  const on = new CompressionGate(true);
  // One compressing window: 400,000 bytes in, 100,000 out, in 10 ms, under a 1,000 B/ms limit.
  on.measured(400_000, 100_000, 10);
  on.endWindow(100, 1_000);
  assert.equal(on.state.active, true);
  const p = pair(64, { compress: { codec: "zstd", level: 1, gate: on } }, "zstd");
  p.saver.sync();
  assert.equal(p.saver.remainingBytes, 64 * PAGE_SIZE);
  assert.equal(p.saver.pendingWireBytes, 64 * PAGE_SIZE / 4);
  assert.equal(p.saver.pendingBusyMs, 64 * PAGE_SIZE / 40_000);

  // Not yet measured, or switched off for the window: the full pages, no busy time.
  for (const gate of [new CompressionGate(true), new CompressionGate(false)]) {
    const q = pair(64, { compress: { codec: "zstd", level: 1, gate } }, "zstd");
    q.saver.sync();
    assert.equal(q.saver.pendingWireBytes, 64 * PAGE_SIZE);
    assert.equal(q.saver.pendingBusyMs, 0);
  }
});
