import assert from "node:assert/strict";
import {
  fullBitmap,
  isZeroPage,
  PAGE_SIZE,
  parseSize,
  popcount32,
  RamBlock,
  RamError,
} from "../../vm/ram.ts";

Deno.test("RamBlock constructor rejects bad names and lengths with RamError", () => {
  assert.throws(() => new RamBlock("", PAGE_SIZE), RamError);
  assert.throws(() => new RamBlock("x".repeat(256), PAGE_SIZE), RamError);
  assert.throws(() => new RamBlock("pc.ram", 0), RamError);
  assert.throws(() => new RamBlock("pc.ram", -PAGE_SIZE), RamError);
  assert.throws(() => new RamBlock("pc.ram", PAGE_SIZE + 1), /not a positive multiple of 4096/);
  assert.throws(() => new RamBlock("pc.ram", 1.5 * PAGE_SIZE), RamError);
});

Deno.test("RamBlock constructor sizes its buffers: one dirty and touched bit per page", () => {
  const block = new RamBlock("pc.ram", 33 * PAGE_SIZE);
  assert.equal(block.pages, 33);
  assert.equal(block.bytes.length, 33 * PAGE_SIZE);
  assert.equal(block.words.length, 33 * 1024);
  assert.equal(block.dirty.length, 2);
  assert.equal(block.touched.length, 2);
  assert.ok(block.bytes.buffer instanceof SharedArrayBuffer);
});

Deno.test("RamBlock constructor shares memory with a block rebuilt from .shared", () => {
  const a = new RamBlock("pc.ram", 4 * PAGE_SIZE);
  const b = new RamBlock("pc.ram", 4 * PAGE_SIZE, a.shared);
  b.bytes[5] = 7;
  b.markDirty(2);
  assert.equal(a.bytes[5], 7);
  assert.equal(a.dirty[0], 4);
});

Deno.test("RamBlock constructor rejects shared buffers of the wrong size", () => {
  const a = new RamBlock("pc.ram", 4 * PAGE_SIZE);
  assert.throws(() => new RamBlock("pc.ram", 8 * PAGE_SIZE, a.shared), /shared buffers/);
});

Deno.test("RamBlock.syncDirty moves bits into the bitmap, clears the log, counts new bits", () => {
  const block = new RamBlock("pc.ram", 70 * PAGE_SIZE);
  const into = new Uint32Array(3);
  into[0] = 1 << 3;
  for (const page of [3, 4, 31, 32, 69]) block.markDirty(page);
  assert.equal(block.syncDirty(into), 4, "page 3 was already set in the bitmap");
  assert.deepEqual([...block.dirty], [0, 0, 0]);
  assert.deepEqual([...into], [(1 << 3 | 1 << 4 | 1 << 31) >>> 0, 1, 1 << 5]);
  assert.equal(block.syncDirty(into), 0, "nothing new after the log was cleared");
});

Deno.test("RamBlock.syncDirty records synced pages as touched", () => {
  const block = new RamBlock("pc.ram", 64 * PAGE_SIZE);
  assert.equal(block.isTouched(40), false);
  block.markDirty(40);
  block.markDirty(31);
  block.syncDirty(new Uint32Array(2));
  assert.equal(block.isTouched(40), true);
  assert.equal(block.isTouched(31), true);
  assert.equal(block.isTouched(41), false);
});

Deno.test("RamBlock.touchAll and markTouched mark pages as possibly non-zero", () => {
  const block = new RamBlock("pc.ram", 40 * PAGE_SIZE);
  block.markTouched(39);
  assert.equal(block.isTouched(39), true);
  assert.equal(block.isTouched(0), false);
  block.touchAll();
  for (let p = 0; p < 40; p++) assert.equal(block.isTouched(p), true);
});

Deno.test("RamBlock.prefault leaves RAM contents unchanged", () => {
  const block = new RamBlock("pc.ram", 4 * PAGE_SIZE);
  block.bytes[PAGE_SIZE] = 9;
  block.prefault();
  assert.equal(block.bytes[PAGE_SIZE], 9);
  assert.equal(block.bytes[0], 0);
});

Deno.test("fullBitmap sets exactly `pages` bits, including a partial tail word", () => {
  const count = (map: Uint32Array) => map.reduce((n, w) => n + popcount32(w), 0);
  for (const pages of [1, 5, 31, 32, 33, 63, 64, 100]) {
    const map = fullBitmap(pages);
    assert.equal(map.length, Math.ceil(pages / 32), `length for ${pages}`);
    assert.equal(count(map), pages, `bits for ${pages}`);
  }
  assert.equal(fullBitmap(33)[1], 1);
  assert.equal(fullBitmap(63)[1], 0x7fffffff);
  assert.equal(fullBitmap(64)[1], 0xffffffff);
});

Deno.test("isZeroPage detects any non-zero word, first, last or middle", () => {
  const block = new RamBlock("pc.ram", 2 * PAGE_SIZE);
  assert.equal(isZeroPage(block.words, 0), true);
  assert.equal(isZeroPage(block.words, 1024), true);
  for (const word of [0, 517, 1023]) {
    block.words[1024 + word] = 1;
    assert.equal(isZeroPage(block.words, 1024), false, `word ${word}`);
    assert.equal(isZeroPage(block.words, 0), true);
    block.words[1024 + word] = 0;
  }
  block.bytes[PAGE_SIZE + 4095] = 0x80;
  assert.equal(isZeroPage(block.words, 1024), false);
});

Deno.test("parseSize reads plain numbers and binary K/M/G/T suffixes", () => {
  assert.equal(parseSize("4096"), 4096);
  assert.equal(parseSize("0"), 0);
  assert.equal(parseSize("64K"), 64 * 1024);
  assert.equal(parseSize("256M"), 256 * 2 ** 20);
  assert.equal(parseSize("1G"), 2 ** 30);
  assert.equal(parseSize("2T"), 2 * 2 ** 40);
  assert.equal(parseSize("1.5M"), 1.5 * 2 ** 20);
  assert.equal(parseSize("512m"), 512 * 2 ** 20);
  assert.equal(parseSize("1KiB"), 1024);
  assert.equal(parseSize("1MB"), 2 ** 20);
  assert.equal(parseSize("100B"), 100);
  assert.equal(parseSize(" 8K "), 8192);
});

Deno.test("parseSize rejects malformed and oversized sizes with RamError", () => {
  for (const bad of ["", "x", "-1", "1X", "K", "1 2", "1iB", "1e3", "99999999999999T"]) {
    assert.throws(() => parseSize(bad), RamError, bad);
  }
  assert.throws(() => parseSize("1Q"), /Invalid size "1Q"/);
});

Deno.test("popcount32 counts set bits of any 32-bit word", () => {
  assert.equal(popcount32(0), 0);
  assert.equal(popcount32(1), 1);
  assert.equal(popcount32(0x80000000), 1);
  assert.equal(popcount32(0xffffffff), 32);
  assert.equal(popcount32(-1), 32);
  assert.equal(popcount32(0x55555555), 16);
  assert.equal(popcount32(0x00f0f00f), 12);
});
