import { putHeader, putZeroWord } from "../../../engine/sections/ram_records.ts";
import assert from "node:assert/strict";
import { StreamReader } from "../../../engine/format/reader.ts";
import { StreamWriter } from "../../../engine/format/writer.ts";
import { countBits, MAX_ITERATE_MS, RamLoader, RamSaver } from "../../../engine/sections/ram.ts";
import { PAGE_SIZE } from "../../../vm/ram.ts";
import { BytesChannel, CaptureChannel } from "../../helpers/byte_channels.ts";
import { ramDigest, TestGuest } from "../../../testing/test_guest.ts";

/** One RAM record as docs/ARCHITECTURE.md "Stream format" lays it out, decoded independently of the engine's reader. */
interface Rec {
  offset: number;
  flags: number;
  block?: string;
  fill?: number;
  data?: Uint8Array;
}

const ZERO = 0x02, MEM_SIZE = 0x04, PAGE = 0x08, EOS = 0x10, CONTINUE = 0x20;

/** Parses RAM records from `bytes` at `pos` up to and including EOS; returns them and the end. */
function parseRecords(bytes: Uint8Array, pos = 0): { recs: Rec[]; end: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const recs: Rec[] = [];
  for (;;) {
    const v = view.getBigUint64(pos);
    pos += 8;
    const flags = Number(v & 0xfffn);
    const offset = Number(v & ~0xfffn);
    const rec: Rec = { offset, flags };
    recs.push(rec);
    if (flags === EOS) return { recs, end: pos };
    assert.equal(flags & MEM_SIZE, 0, "no MEM_SIZE in page payloads");
    if (!(flags & CONTINUE)) {
      const len = bytes[pos++];
      rec.block = new TextDecoder().decode(bytes.subarray(pos, pos + len));
      pos += len;
    }
    if (flags & ZERO) rec.fill = bytes[pos++];
    else if (flags & PAGE) {
      rec.data = bytes.slice(pos, pos + PAGE_SIZE);
      pos += PAGE_SIZE;
    } else throw new Error(`unexpected flags 0x${flags.toString(16)}`);
  }
}

function setup(blocks: [string, number][] = [["pc.ram", 16 * PAGE_SIZE]]) {
  const guest = new TestGuest(blocks);
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 1 << 20);
  let t = 0;
  const saver = new RamSaver(guest.blocks, () => t);
  return { guest, ch, w, saver, advance: (ms: number) => (t += ms) };
}

async function payload(w: StreamWriter, ch: CaptureChannel): Promise<Uint8Array> {
  await w.drain();
  const out = ch.bytes();
  ch.chunks.length = 0;
  return out;
}

const never = () => false;

Deno.test("RamSaver.setup() writes the total with MEM_SIZE, every block's name and length, then EOS", async () => {
  const { w, ch, saver } = setup([["pc.ram", 8 * PAGE_SIZE], ["vga", PAGE_SIZE]]);
  await saver.setup(w);
  const bytes = await payload(w, ch);
  const view = new DataView(bytes.buffer);
  assert.equal(view.getBigUint64(0), BigInt(9 * PAGE_SIZE) | 4n);
  assert.equal(bytes[8], 6);
  assert.equal(new TextDecoder().decode(bytes.subarray(9, 15)), "pc.ram");
  assert.equal(view.getBigUint64(15), BigInt(8 * PAGE_SIZE));
  assert.equal(bytes[23], 3);
  assert.equal(new TextDecoder().decode(bytes.subarray(24, 27)), "vga");
  assert.equal(view.getBigUint64(27), BigInt(PAGE_SIZE));
  assert.equal(view.getBigUint64(35), 0x10n);
  assert.equal(bytes.length, 43);
  assert.equal(saver.stats.transferred, 43);
});

Deno.test("RamSaver.iterate() sends ZERO for an untouched page without reading it (the touched-map contract)", async () => {
  const { guest, w, ch, saver } = setup();
  const block = guest.blocks[0];
  // Non-zero bytes in page 3 whose touched bit is clear (and no dirty bit): by
  // contract an untouched page is all zeroes, so the saver must not scan it.
  block.bytes.fill(0x5a, 3 * PAGE_SIZE, 4 * PAGE_SIZE);
  assert.equal(block.isTouched(3), false);
  await saver.iterate(w, never);
  const { recs } = parseRecords(await payload(w, ch));
  const rec3 = recs.find((r) => r.offset === 3 * PAGE_SIZE)!;
  assert.equal(rec3.flags & ~CONTINUE, ZERO);
  assert.equal(rec3.fill, 0);
});

Deno.test("RamSaver.iterate() sends PAGE with the bytes for a touched non-zero page and ZERO for a touched zero page", async () => {
  const { guest, w, ch, saver } = setup();
  const block = guest.blocks[0];
  block.bytes.fill(0x11, 5 * PAGE_SIZE, 6 * PAGE_SIZE);
  block.bytes[7 * PAGE_SIZE + PAGE_SIZE - 1] = 0x22; // only the last byte set
  block.markTouched(5);
  block.markTouched(7);
  block.markTouched(9); // touched but all zero: found by scanning
  await saver.iterate(w, never);
  const { recs } = parseRecords(await payload(w, ch));
  assert.equal(recs.length, 17, "16 pages + EOS");
  for (let p = 0; p < 16; p++) {
    const r = recs[p];
    assert.equal(r.offset, p * PAGE_SIZE);
    if (p === 5 || p === 7) {
      assert.equal(r.flags & ~CONTINUE, PAGE, `page ${p}`);
      assert.deepEqual(r.data, block.bytes.slice(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
    } else {
      assert.equal(r.flags & ~CONTINUE, ZERO, `page ${p}`);
    }
  }
  assert.equal(saver.stats.normal, 2);
  assert.equal(saver.stats.duplicate, 14);
});

Deno.test("RamSaver with zeroedAsPages sends a page zeroed after it went out with data as a full zero page (readers that skip ZERO records see it zeroed)", async () => {
  for (const zeroedAsPages of [false, true]) {
    const guest = new TestGuest([["pc.ram", 4 * PAGE_SIZE]]);
    const ch = new CaptureChannel();
    const w = new StreamWriter(ch, 1 << 20);
    const saver = new RamSaver(guest.blocks, () => 0, { zeroedAsPages });
    guest.write(PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(0x5a));
    saver.sync();
    await saver.iterate(w, never);
    parseRecords(await payload(w, ch));
    guest.write(PAGE_SIZE, new Uint8Array(PAGE_SIZE)); // zeroed after it went out
    guest.write(2 * PAGE_SIZE, new Uint8Array(8)); // written with zeroes, never with data
    saver.sync();
    await saver.iterate(w, never);
    const { recs } = parseRecords(await payload(w, ch));
    const rec1 = recs.find((r) => r.offset === PAGE_SIZE)!;
    const rec2 = recs.find((r) => r.offset === 2 * PAGE_SIZE)!;
    assert.equal(rec2.flags & ~CONTINUE, ZERO, "a page that never held data stays a ZERO record");
    if (zeroedAsPages) {
      assert.equal(rec1.flags & ~CONTINUE, PAGE);
      assert.deepEqual(rec1.data, new Uint8Array(PAGE_SIZE));
    } else {
      assert.equal(rec1.flags & ~CONTINUE, ZERO);
    }
  }
});

Deno.test("RamSaver.iterate() names the block in the first record of a block and uses CONTINUE after it", async () => {
  const { w, ch, saver } = setup([["pc.ram", 40 * PAGE_SIZE], ["vga.vram", 3 * PAGE_SIZE]]);
  await saver.iterate(w, never);
  const { recs } = parseRecords(await payload(w, ch));
  assert.equal(recs.length, 44);
  assert.equal(recs[0].block, "pc.ram");
  assert.equal(recs[0].flags & CONTINUE, 0);
  for (let i = 1; i < 40; i++) {
    assert.equal(recs[i].flags & CONTINUE, CONTINUE, `record ${i}`);
    assert.equal(recs[i].block, undefined);
  }
  assert.equal(recs[40].block, "vga.vram");
  assert.equal(recs[40].flags & CONTINUE, 0);
  assert.equal(recs[40].offset, 0);
  assert.equal(recs[41].flags & CONTINUE, CONTINUE);
  assert.equal(recs[43].flags, EOS);
});

Deno.test("RamSaver.iterate() names the block again in the first record of every new payload", async () => {
  const { guest, w, ch, saver } = setup();
  await saver.iterate(w, never);
  await payload(w, ch);
  guest.write(2 * PAGE_SIZE, Uint8Array.of(1));
  guest.write(4 * PAGE_SIZE, Uint8Array.of(1));
  saver.sync();
  await saver.iterate(w, never);
  const { recs } = parseRecords(await payload(w, ch));
  assert.equal(recs.length, 3);
  assert.equal(recs[0].block, "pc.ram");
  assert.equal(recs[0].flags, PAGE);
  assert.equal(recs[1].flags, PAGE | CONTINUE);
});

Deno.test("RamSaver.stats count duplicate, normal and every byte transferred", async () => {
  const { guest, w, ch, saver } = setup();
  const block = guest.blocks[0];
  for (const p of [0, 1, 15]) {
    block.bytes[p * PAGE_SIZE + 9] = 1;
    block.markTouched(p);
  }
  await saver.setup(w);
  const r = await saver.iterate(w, never);
  assert.equal(r.pages, 16);
  assert.equal(r.passDone, true);
  assert.equal(saver.stats.normal, 3);
  assert.equal(saver.stats.duplicate, 13);
  // Setup: MEM_SIZE 8, "pc.ram" 1 + 6, length 8, EOS 8. Iterate: the first record
  // names the block (8 + 1 + 6 + 4096), then 2 PAGEs of 8 + 4096, 13 ZEROs of 8 + 1, EOS 8.
  const setupBytes = 8 + 1 + 6 + 8 + 8;
  const iterBytes = (8 + 1 + 6 + 4096) + 2 * (8 + 4096) + 13 * (8 + 1) + 8;
  assert.equal(saver.stats.transferred, setupBytes + iterBytes);
  assert.equal((await payload(w, ch)).length, setupBytes + iterBytes);
  assert.equal(saver.dirtyPages, 0);
  assert.equal(saver.remainingBytes, 0);
  assert.equal(saver.totalBytes, 16 * PAGE_SIZE);
});

Deno.test("RamSaver.iterate() stops as soon as the stop callback says so, still ending with EOS", async () => {
  const { w, ch, saver } = setup([["pc.ram", 256 * PAGE_SIZE]]);
  let calls = 0;
  const r = await saver.iterate(w, () => calls++ >= 1);
  assert.equal(r.pages, 64, "one batch of 64 pages before the second check");
  assert.equal(r.passDone, false);
  assert.equal(saver.dirtyPages, 192);
  const { recs } = parseRecords(await payload(w, ch));
  assert.equal(recs.length, 65);
  assert.equal(recs.at(-1)!.flags, EOS);

  const r2 = await saver.iterate(w, () => true);
  assert.equal(r2.pages, 0);
  const bytes = await payload(w, ch);
  assert.equal(bytes.length, 8, "only EOS");
  assert.equal(new DataView(bytes.buffer).getBigUint64(0), 0x10n);
  // The next iterate continues where the cursor stopped.
  await saver.iterate(w, never);
  const { recs: rest } = parseRecords(await payload(w, ch));
  assert.equal(rest[0].offset, 64 * PAGE_SIZE);
  assert.equal(rest.length, 193);
});

Deno.test("RamSaver.iterate() stops after MAX_ITERATE_MS of its clock", async () => {
  const { w, saver, advance } = setup([["pc.ram", 1024 * PAGE_SIZE]]);
  let batches = 0;
  const r = await saver.iterate(w, () => {
    if (++batches === 3) advance(MAX_ITERATE_MS + 1);
    return false;
  });
  assert.equal(r.pages, 3 * 64);
  assert.equal(r.passDone, false);
  await w.drain();
});

Deno.test("RamSaver.pending() syncs the dirty log only when remaining bytes are below maxSize", () => {
  const { guest, saver } = setup();
  const remaining = 16 * PAGE_SIZE;
  guest.write(0, Uint8Array.of(1));
  assert.equal(saver.pending(remaining), remaining);
  assert.equal(saver.stats.dirtySyncCount, 0, "not below maxSize: no sync");
  assert.equal(saver.pending(remaining + 1), remaining);
  assert.equal(saver.stats.dirtySyncCount, 1, "below maxSize: synced");
  assert.equal(guest.blocks[0].dirty[0], 0, "the guest's log was collected");
});

Deno.test("RamSaver.pending() never reports nothing left without a fresh sync, even at maxSize 0", async () => {
  const { guest, w, ch, saver } = setup();
  await saver.iterate(w, never);
  await payload(w, ch);
  assert.equal(saver.dirtyPages, 0);
  guest.write(3 * PAGE_SIZE, Uint8Array.of(1));
  const syncs = saver.stats.dirtySyncCount;
  assert.equal(saver.pending(0), PAGE_SIZE, "the page dirtied meanwhile is pending");
  assert.equal(saver.stats.dirtySyncCount, syncs + 1);
});

Deno.test("RamSaver.sync() picks up pages dirtied by TestGuest.write after they were sent", async () => {
  const { guest, w, ch, saver } = setup();
  await saver.iterate(w, never);
  await payload(w, ch);
  assert.equal(saver.dirtyPages, 0);
  guest.write(5 * PAGE_SIZE + 100, Uint8Array.of(7, 8, 9));
  guest.write(11 * PAGE_SIZE - 1, Uint8Array.of(1, 2)); // straddles pages 10 and 11
  assert.equal(saver.sync(), 3);
  assert.equal(saver.dirtyPages, 3);
  assert.equal(saver.sync(), 0, "already collected");
  assert.equal(saver.pending(Infinity), 3 * PAGE_SIZE);
  await saver.iterate(w, never);
  const { recs } = parseRecords(await payload(w, ch));
  assert.deepEqual(recs.map((r) => [r.offset / PAGE_SIZE, r.flags & ~CONTINUE]), [
    [5, PAGE],
    [10, PAGE],
    [11, PAGE],
    [0, EOS],
  ]);
  assert.equal(recs[0].data![100], 7);
  assert.equal(recs[1].data![PAGE_SIZE - 1], 1);
  assert.equal(recs[2].data![0], 2);
});

Deno.test("RamSaver.sync() measures the dirty page rate over at least one second", async () => {
  const { guest, w, saver, advance } = setup();
  await saver.iterate(w, never); // the migration bitmap is empty now
  for (let p = 0; p < 10; p++) guest.write(p * PAGE_SIZE, Uint8Array.of(1));
  advance(500);
  assert.equal(saver.sync(), 10);
  assert.equal(saver.stats.dirtyPagesRate, 0, "less than a second measured: not updated");
  advance(500);
  saver.sync();
  assert.equal(saver.stats.dirtyPagesRate, 10, "10 pages in 1000 ms");
  assert.equal(saver.stats.dirtySyncCount, 2);
  await w.drain();
});

Deno.test("RamSaver.complete() sends every dirty page of a two-block guest wherever iterate left the cursor", async () => {
  // Block A spans two bitmap words, block B one. An iterate that stops after one
  // batch leaves the cursor at the end of A; the page dirtied in A's second word
  // then lies a full wrap (two block switches) away.
  const { guest, w, ch, saver } = setup([["a", 64 * PAGE_SIZE], ["b", 32 * PAGE_SIZE]]);
  let calls = 0;
  await saver.iterate(w, () => calls++ >= 1);
  guest.write(40 * PAGE_SIZE, Uint8Array.of(0xee));
  const sent = await saver.complete(w);
  assert.equal(saver.dirtyPages, 0, "complete() left dirty pages behind");
  assert.equal(sent, 33);
  const bytes = await payload(w, ch);
  const first = parseRecords(bytes);
  const { recs } = parseRecords(bytes, first.end);
  const page40 = recs.find((r) => r.offset === 40 * PAGE_SIZE);
  assert.ok(page40, "page 40 of block a was sent by complete()");
  assert.equal(page40.data![0], 0xee);
});

Deno.test("RamSaver.iterate() reports passDone only when no dirty page is left in any block", async () => {
  const { guest, w, saver } = setup([["a", 64 * PAGE_SIZE], ["b", 32 * PAGE_SIZE]]);
  let calls = 0;
  await saver.iterate(w, () => calls++ >= 1);
  // Pages in a (already swept) and b (not yet): one batch finds both.
  guest.write(40 * PAGE_SIZE, Uint8Array.of(1));
  saver.sync();
  const r = await saver.iterate(w, never);
  assert.equal(r.passDone, true);
  assert.equal(saver.dirtyPages, 0);
  await w.drain();
});

Deno.test("RamSaver → RamLoader round trip of a two-block guest with writes between passes", async () => {
  const blocks: [string, number][] = [["pc.ram", 200 * PAGE_SIZE], ["vga.vram", 37 * PAGE_SIZE]];
  const { guest, w, ch, saver } = setup(blocks);
  guest.fillRandom(9);
  guest.blocks[0].bytes.fill(0, 0, 50 * PAGE_SIZE); // some zero pages among touched ones
  await saver.setup(w);
  const payloads = 1 + 3 + 1;
  let calls = 0;
  await saver.iterate(w, () => calls++ % 2 === 1); // one batch
  guest.write(3 * PAGE_SIZE, new Uint8Array(PAGE_SIZE * 2).fill(3));
  guest.write(10 * PAGE_SIZE, Uint8Array.of(4), 1);
  saver.sync();
  await saver.iterate(w, () => calls++ % 2 === 1);
  guest.write(199 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(5));
  saver.sync();
  await saver.iterate(w, never);
  guest.write(36 * PAGE_SIZE, Uint8Array.of(6), 1);
  guest.write(0, Uint8Array.of(6));
  await saver.complete(w);
  assert.equal(saver.dirtyPages, 0);
  const bytes = await payload(w, ch);

  const dst = new TestGuest(blocks);
  dst.fillRandom(1234); // stale RAM: zero pages must be cleared
  const loader = new RamLoader(dst.blocks);
  const r = new StreamReader(new BytesChannel(bytes, 1000), 1 << 16);
  await loader.load(r, "start");
  assert.equal(loader.sizesSeen, true);
  for (let i = 1; i < payloads; i++) await loader.load(r, "part");
  assert.equal(await r.atEnd(), true);
  assert.equal(await ramDigest(dst), await ramDigest(guest));
  assert.equal(loader.stats.normalPages, saver.stats.normal);
  assert.equal(loader.stats.zeroPages, saver.stats.duplicate);
});

Deno.test("countBits() counts the set bits of a bitmap", () => {
  assert.equal(countBits(Uint32Array.of(0, 1, 0xffffffff, 0x80000001)), 35);
});

Deno.test("RamSaver.pendingBusyMs prices dirty pages at the last pass's busy time per page, with XBZRLE only", async () => {
  for (const xbzrle of [false, true]) {
    const guest = new TestGuest([["pc.ram", 256 * PAGE_SIZE]]);
    guest.fillRandom(3);
    const w = new StreamWriter(new CaptureChannel(), 4 << 20);
    // A clock that moves 1 ms each time it is read: every measured stretch costs time,
    // however fast the machine.
    let t = 0;
    const saver = new RamSaver(
      guest.blocks,
      () => ++t,
      xbzrle ? { xbzrleCacheSize: 512 * PAGE_SIZE } : {},
    );
    await saver.iterate(w, never); // the bulk stage: not measured
    const dirty = (from: number) => {
      for (let p = from; p < from + 64; p++) guest.write(p * PAGE_SIZE, Uint8Array.of(p, 7));
    };
    dirty(0);
    saver.sync();
    assert.equal(saver.pendingBusyMs, 0, "no pass measured yet");
    await saver.iterate(w, never); // pass 2: 64 pages, measured
    dirty(64);
    saver.sync();
    const one = saver.pendingBusyMs;
    dirty(128);
    saver.sync(); // no pass in between: same price per page
    if (!xbzrle) {
      assert.equal(one, 0);
      assert.equal(saver.pendingBusyMs, 0);
    } else {
      assert.ok(one > 0, `64 dirty pages cost ${one} ms`);
      assert.equal(saver.pendingBusyMs, 2 * one, "twice the pages, twice the time");
    }
    await w.drain();
  }
});

Deno.test("putZeroWord() writes the same 32 records as putHeader() one by one, at any offset", () => {
  for (const firstPage of [0, 32, 4096 * 32, 2 ** 21 * 32 + 64]) {
    const a = new Uint8Array(288);
    const b = new Uint8Array(288);
    assert.equal(putZeroWord(a, 0, firstPage), 288);
    let pos = 0;
    for (let i = 0; i < 32; i++) {
      pos = putHeader(b, pos, (firstPage + i) * 4096, 0x02 | 0x20);
      b[pos++] = 0;
    }
    assert.deepEqual(a, b, `first page ${firstPage}`);
  }
});

Deno.test("RamLoader records in the block's write log every page it changes, on both its paths, so a mirror pulled from it between parts ends equal", async () => {
  for (const readSize of [100, 1 << 20]) { // small reads: the general loop; large: the fast path
    const blocks: [string, number][] = [["pc.ram", 120 * PAGE_SIZE]];
    const { guest, w, ch, saver } = setup(blocks);
    guest.fillRandom(5);
    guest.blocks[0].bytes.fill(0, 0, 40 * PAGE_SIZE); // touched but zero: ZERO records
    await saver.setup(w);
    await saver.iterate(w, never);
    guest.write(7 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(9));
    guest.write(50 * PAGE_SIZE, new Uint8Array(PAGE_SIZE)); // data → zero
    saver.sync();
    await saver.complete(w);
    const bytes = await payload(w, ch);

    const dst = new TestGuest(blocks);
    const block = dst.blocks[0];
    block.bytes.fill(0xee, 30 * PAGE_SIZE, 35 * PAGE_SIZE); // stale data under ZERO records
    for (let p = 30; p < 35; p++) block.markTouched(p);
    block.trackWrites();
    const mirror = block.bytes.slice(); // what a pulled-from copy holds before the stream
    const pull = () => {
      const pages = block.takeWritten();
      for (let p = 0; pages !== null && p < block.pages; p++) {
        if (pages[p >>> 5] & (1 << (p & 31))) {
          mirror.set(block.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), p * PAGE_SIZE);
        }
      }
    };
    const loader = new RamLoader(dst.blocks);
    const r = new StreamReader(new BytesChannel(bytes, readSize), 1 << 16);
    await loader.load(r, "start");
    pull();
    await loader.load(r, "part");
    pull();
    await loader.load(r, "end");
    pull();
    assert.equal(await ramDigest(dst), await ramDigest(guest), `read size ${readSize}`);
    const differs = mirror.findIndex((b, i) => b !== block.bytes[i]);
    assert.equal(differs, -1, `read size ${readSize}: the mirror missed page ${differs >> 12}`);
    assert.equal(block.takeWritten(), null, "taking clears the log");
  }
});
