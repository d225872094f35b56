/**
 * The RAM section's fast paths (whole words of never-written pages on the sender,
 * buffered CONTINUE records on the receiver) must produce and accept exactly the
 * bytes of the plain one-record-at-a-time format (docs/ARCHITECTURE.md "Stream format"). A reference encoder
 * written from the spec is compared byte for byte with RamSaver's output, and the
 * stream is loaded back through small reads so records straddle every boundary.
 */
import assert from "node:assert/strict";
import { StreamReader } from "../../../engine/format/reader.ts";
import { StreamWriter } from "../../../engine/format/writer.ts";
import { RamLoader, RamSaver } from "../../../engine/sections/ram.ts";
import type { Channel } from "../../../transports/transport.ts";
import { PAGE_SIZE, RamBlock } from "../../../vm/ram.ts";

const ZERO = 0x02, MEM_SIZE = 0x04, PAGE = 0x08, EOS = 0x10, CONTINUE = 0x20;

class Sink implements Channel {
  readonly closed = false;
  readonly peer = "sink:";
  readonly chunks: Uint8Array[] = [];
  write(chunk: Uint8Array): Promise<void> {
    this.chunks.push(chunk.slice());
    return Promise.resolve();
  }
  read(_buf: Uint8Array): Promise<number | null> {
    return Promise.resolve(null);
  }
  finish(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {}
  [Symbol.dispose](): void {}
  bytes(): Uint8Array {
    return concat(this.chunks);
  }
}

/** Serves `data` in reads of at most `step` bytes. */
class Source extends Sink {
  #off = 0;
  constructor(readonly data: Uint8Array, readonly step: number) {
    super();
  }
  override read(buf: Uint8Array): Promise<number | null> {
    if (this.#off >= this.data.length) return Promise.resolve(null);
    const n = Math.min(buf.length, this.step, this.data.length - this.#off);
    buf.set(this.data.subarray(this.#off, this.#off + n));
    this.#off += n;
    return Promise.resolve(n);
  }
}

/** Asserts equal bytes, naming the first difference (deepEqual's diff of MiBs is unusable). */
function assertSameBytes(got: Uint8Array, want: Uint8Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let i = 0;
  while (i < got.length && got[i] === want[i]) i++;
  assert.ok(i === got.length, `${what}: first difference at byte ${i} (0x${i.toString(16)})`);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function be64(v: number): Uint8Array {
  const out = new Uint8Array(8);
  const view = new DataView(out.buffer);
  view.setUint32(0, Math.floor(v / 2 ** 32));
  view.setUint32(4, v >>> 0);
  return out;
}

/** The stream format (docs/ARCHITECTURE.md), one page at a time: what the RAM START payload and one full sweep must be. */
function reference(blocks: RamBlock[]): Uint8Array {
  const parts: Uint8Array[] = [];
  const enc = new TextEncoder();
  parts.push(be64(blocks.reduce((n, b) => n + b.length, 0) + MEM_SIZE));
  for (const b of blocks) {
    const name = enc.encode(b.name);
    parts.push(Uint8Array.of(name.length), name, be64(b.length));
  }
  parts.push(be64(EOS));
  let last: RamBlock | null = null;
  for (const b of blocks) {
    for (let p = 0; p < b.pages; p++) {
      const data = b.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
      const zero = data.every((x) => x === 0);
      const cont = last === b;
      parts.push(be64(p * PAGE_SIZE + (zero ? ZERO : PAGE) + (cont ? CONTINUE : 0)));
      if (!cont) {
        const name = enc.encode(b.name);
        parts.push(Uint8Array.of(name.length), name);
        last = b;
      }
      parts.push(zero ? Uint8Array.of(0) : data.slice());
    }
  }
  parts.push(be64(EOS));
  return concat(parts);
}

/** A block with untouched words, touched zero pages, touched data pages and a partial last word. */
function mixedBlock(name: string, pages: number, seed: number): RamBlock {
  const b = new RamBlock(name, pages * PAGE_SIZE);
  let x = seed | 1;
  for (let p = 0; p < pages; p++) {
    x = (x * 1103515245 + 12345) >>> 0;
    const kind = x % 7;
    if (kind === 0) {
      b.bytes[p * PAGE_SIZE + (x % PAGE_SIZE)] = 1 + (x >>> 24) % 255; // one byte anywhere
      b.markTouched(p);
    } else if (kind === 1) {
      b.markTouched(p); // touched but still zero: must be scanned and sent as ZERO
    } else if (kind === 2 && (p & 96) === 96) {
      crypto.getRandomValues(b.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
      b.markTouched(p);
    }
  }
  // Leave whole untouched words so the sender's word fast path runs.
  return b;
}

async function save(blocks: RamBlock[], mode: "complete" | "iterate"): Promise<Uint8Array> {
  const sink = new Sink();
  const w = new StreamWriter(sink, 64 << 10); // small buffer: many flush points
  const saver = new RamSaver(blocks, () => 0);
  await saver.setup(w);
  if (mode === "complete") {
    await saver.complete(w);
  } else {
    // Page budgets of 64 per step, as the pre-copy loop uses; then the (empty) final pass.
    let r;
    do r = await saver.iterate(w, () => false); while (!r.passDone);
  }
  await w.drain();
  return sink.bytes();
}

const shapes: [string, () => RamBlock[]][] = [
  ["idle block", () => [new RamBlock("pc.ram", 8 << 20)]],
  ["mixed block with a partial last word", () => [mixedBlock("pc.ram", 2048 + 13, 7)]],
  ["two mixed blocks", () => [mixedBlock("pc.ram", 1024, 3), mixedBlock("vga.vram", 96 + 5, 9)]],
];

for (const [what, make] of shapes) {
  Deno.test(`RamSaver.complete() writes the documented stream format byte for byte: ${what}`, async () => {
    const blocks = make();
    const got = await save(blocks, "complete");
    assertSameBytes(got, reference(blocks), "stream");
  });

  Deno.test(`RamLoader reads it back through reads of every awkward size: ${what}`, async () => {
    const blocks = make();
    const stream = reference(blocks);
    for (const step of [1, 7, 4103, 4105, 65536, 1 << 22]) {
      const dst = blocks.map((b) => new RamBlock(b.name, b.length));
      // Stale data in the destination: ZERO records must clear touched pages.
      for (const d of dst) {
        d.bytes.fill(0xee, 0, Math.min(d.length, 40 * PAGE_SIZE));
        for (let p = 0; p < Math.min(d.pages, 40); p++) d.markTouched(p);
      }
      const r = new StreamReader(new Source(stream, step), 1 << 20);
      const loader = new RamLoader(dst);
      await loader.load(r, "start");
      await loader.load(r, "part");
      assert.equal(r.avail, 0, `step ${step}: all consumed`);
      for (let i = 0; i < blocks.length; i++) {
        assertSameBytes(dst[i].bytes, blocks[i].bytes, `step ${step}: block ${blocks[i].name}`);
      }
      const pages = blocks.reduce((n, b) => n + b.pages, 0);
      assert.equal(loader.stats.zeroPages + loader.stats.normalPages, pages);
    }
  });
}

Deno.test("RamSaver.iterate() in 64-page steps sends the same records as complete()", async () => {
  const a = mixedBlock("pc.ram", 4096 + 31, 11);
  const fromComplete = await save([a], "complete");
  const fromIterate = await save([a], "iterate");
  // iterate() writes EOS after each step and starts each step naming the block:
  // compare the decoded page records, not the framing.
  const pages = (s: Uint8Array) => {
    const recs: string[] = [];
    const v = new DataView(s.buffer);
    let pos = 8 + 1 + 6 + 8 + 8; // MEM_SIZE, "pc.ram" and its length, EOS
    while (pos < s.length) {
      const hi = v.getUint32(pos), lo = v.getUint32(pos + 4);
      pos += 8;
      const flags = lo & 0xfff;
      if (flags === EOS) continue;
      if (!(flags & CONTINUE)) pos += 1 + s[pos];
      const len = flags & ZERO ? 1 : PAGE_SIZE;
      recs.push(
        `${hi}:${lo & ~0xfff}:${flags & (ZERO | PAGE)}:${s.subarray(pos, pos + len).join()}`,
      );
      pos += len;
    }
    return recs;
  };
  assert.deepEqual(pages(fromIterate), pages(fromComplete));
});

Deno.test("RamLoader fast path stops at a bad record and the error names its offset", async () => {
  const block = new RamBlock("pc.ram", 64 * PAGE_SIZE);
  const stream = reference([block]);
  // START payload: 8 + 1 + 6 + 8 + 8 = 31 bytes; first record 8 + 1 + 6 + 1 = 16.
  const bad = 31 + 16 + 9 * 40;
  const copy = stream.slice();
  copy[bad + 8] = 5; // fill byte of the 42nd ZERO record
  const r = new StreamReader(new Source(copy, 1 << 20));
  const loader = new RamLoader([new RamBlock("pc.ram", 64 * PAGE_SIZE)]);
  await loader.load(r, "start");
  await assert.rejects(
    () => loader.load(r, "part"),
    (e: Error) => e.message.includes(`0x${bad.toString(16)}`) && /fill byte 0x5/.test(e.message),
  );
  assert.equal(loader.stats.zeroPages, 41);
});
