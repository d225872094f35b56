import assert from "node:assert/strict";
import { RamBlock } from "../../../vm/ram.ts";
import { applyPacket, fillPacket } from "../../../engine/multifd/pages.ts";
import { MultifdError, PACKET_FIXED, SLOT_BYTES } from "../../../engine/multifd/packet.ts";
import { sharedKernels } from "../../../engine/wasm/kernels.ts";

const kernels = sharedKernels();
const PAGE = 4096;

/** A source block: page 0 never written, page 1 written but zero, pages 2.. text. */
function source(): RamBlock {
  const b = new RamBlock("pc.ram", 16 * PAGE);
  b.markTouched(1);
  for (let p = 2; p < 16; p++) {
    b.bytes.set(new TextEncoder().encode(`page ${p} `.repeat(300)).subarray(0, PAGE), p * PAGE);
    b.markTouched(p);
  }
  return b;
}

function job(pages: number[]) {
  return { block: 0, pages: Int32Array.from(pages), seq: 0, sync: 0 };
}

for (
  const compression of [null, { codec: "zstd", level: 3 }, { codec: "lz4", level: 1 }] as const
) {
  const label = compression?.codec ?? "plain";
  Deno.test(`multifd pages (${label}): a filled packet applies to the same bytes and digests`, () => {
    const src = source();
    const dst = new RamBlock("pc.ram", 16 * PAGE);
    dst.bytes.fill(0xee, 0, 2 * PAGE); // stale data where zero pages land
    dst.touchAll();
    const slot = new Uint8Array(new SharedArrayBuffer(SLOT_BYTES));
    const pages = [0, 1, 2, 3, 9, 15];
    const filled = fillPacket([src], slot, job(pages), kernels, compression);
    assert.equal(filled.zero, 2);
    assert.equal(filled.normal, 4);
    assert.equal(filled.compressed, compression !== null);
    if (compression) assert.ok(filled.length < 4 * PAGE);
    const applied = applyPacket(
      [dst],
      slot,
      filled.length,
      0,
      0,
      kernels,
      compression?.codec ?? null,
    );
    assert.deepEqual([...applied.pages], pages);
    assert.deepEqual([...applied.digests], [...filled.digests]);
    for (const p of pages) {
      assert.deepEqual(
        dst.bytes.subarray(p * PAGE, (p + 1) * PAGE),
        src.bytes.subarray(p * PAGE, (p + 1) * PAGE),
      );
      assert.equal(applied.digests[pages.indexOf(p)], kernels.digest(src.bytes, p * PAGE, PAGE));
    }
    assert.ok(dst.isTouched(9));
  });
}

/** Fills a packet of pages 2 and 3, lets `damage` change it, applies it to a fresh block. */
function applyDamaged(
  damage: (slot: Uint8Array, length: number) => number,
  codec: "zstd" | null = null,
): { error: unknown; dst: RamBlock } {
  const src = source();
  const dst = new RamBlock("pc.ram", 16 * PAGE);
  const slot = new Uint8Array(new SharedArrayBuffer(SLOT_BYTES));
  const { length } = fillPacket(
    [src],
    slot,
    job([2, 3]),
    kernels,
    codec ? { codec, level: 1 } : null,
  );
  const newLength = damage(slot, length);
  try {
    applyPacket([dst], slot, newLength, 1, 0x100, kernels, codec);
  } catch (error) {
    return { error, dst };
  }
  return { error: null, dst };
}

Deno.test("multifd pages: damage anywhere is refused before a byte of RAM is written", () => {
  const cases: [string, (slot: Uint8Array, length: number) => number, RegExp][] = [
    [
      "a flipped data byte",
      (s, n) => (s[n - 100] ^= 1, n),
      /digests sum to .*the data was damaged/,
    ],
    ["an offset outside the block", (s, n) => {
      new DataView(s.buffer).setUint32(PACKET_FIXED + 6 + 8 + 4, (16 * PAGE) | 0x08);
      return n;
    }, /entry 1: offset 0x10000 beyond block "pc.ram"/],
    [
      "an unknown entry kind",
      (s, n) => (s[PACKET_FIXED + 6 + 7] = 0x48, n),
      /entry 0 has kind 0x48/,
    ],
    ["an unknown block", (s, n) => (s[PACKET_FIXED] = 0x71, n), /unknown block "qc.ram"/],
    ["a short packet", (_s, n) => n - 1, /a packet of \d+ bytes, its header says \d+/],
  ];
  for (const [what, damage, reason] of cases) {
    const { error, dst } = applyDamaged(damage);
    assert.ok(error instanceof MultifdError, what);
    assert.equal(error.channel, 1);
    assert.match(error.message, /^Invalid multifd channel 1 at byte 0x100: /);
    assert.match(error.reason, reason, what);
    assert.ok(dst.bytes.every((b) => b === 0), `${what}: nothing written`);
  }
});

Deno.test("multifd pages: compressed data is refused by a destination set to another method, and damaged frames fail", () => {
  const src = source();
  const slot = new Uint8Array(new SharedArrayBuffer(SLOT_BYTES));
  const { length } = fillPacket([src], slot, job([2, 3, 4]), kernels, { codec: "zstd", level: 1 });
  const dst = new RamBlock("pc.ram", 16 * PAGE);
  assert.throws(
    () => applyPacket([dst], slot, length, 0, 0, kernels, null),
    /compressed with method 1, but this destination's compress_method is none/,
  );
  assert.throws(
    () => applyPacket([dst], slot, length, 0, 0, kernels, "lz4"),
    /compress_method is lz4/,
  );
  const { error } = applyDamaged((s, n) => (s[n - 5] ^= 0xff, n), "zstd");
  assert.ok(error instanceof MultifdError);
  assert.ok(dst.bytes.every((b) => b === 0));
});
