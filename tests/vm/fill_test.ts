import assert from "node:assert/strict";
import { fillFromImage, fillRam, isFillMode, patternWord } from "../../vm/fill.ts";
import { isZeroPage, PAGE_SIZE, RamBlock } from "../../vm/ram.ts";

const PAGES = 64;

function allZero(block: RamBlock): boolean {
  for (let p = 0; p < block.pages; p++) if (!isZeroPage(block.words, p * 1024)) return false;
  return true;
}

Deno.test("fillRam zero leaves a fresh block zero and untouched", () => {
  const block = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  fillRam(block, "zero");
  assert.ok(allZero(block));
  assert.ok(block.touched.every((w) => w === 0));
});

Deno.test("fillRam zero clears pages that were written (touched or dirty)", () => {
  const block = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  fillRam(block, "random", 3);
  block.touched.fill(0);
  block.markTouched(5);
  block.markDirty(40);
  block.bytes.fill(0, 0, 5 * PAGE_SIZE);
  block.bytes.fill(0, 6 * PAGE_SIZE, 40 * PAGE_SIZE);
  block.bytes.fill(0, 41 * PAGE_SIZE);
  fillRam(block, "zero");
  assert.ok(allZero(block));
  assert.equal(block.isTouched(5), false);
});

Deno.test("fillRam random is deterministic per seed, differs across seeds, touches all", () => {
  const a = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  const b = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  const c = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  fillRam(a, "random", 42);
  fillRam(b, "random", 42);
  fillRam(c, "random", 43);
  assert.deepEqual(a.bytes, b.bytes);
  assert.notDeepEqual(a.bytes, c.bytes);
  for (let p = 0; p < PAGES; p++) assert.equal(a.isTouched(p), true);
});

Deno.test("fillRam random fills every page with roughly uniform bytes", () => {
  const block = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  fillRam(block, "random");
  const counts = new Array<number>(256).fill(0);
  for (const byte of block.bytes) counts[byte]++;
  const mean = block.length / 256;
  for (const n of counts) assert.ok(Math.abs(n - mean) < mean * 0.2, `count ${n} vs ${mean}`);
  for (let p = 0; p < PAGES; p++) assert.equal(isZeroPage(block.words, p * 1024), false);
});

Deno.test("fillRam pattern writes patternWord: deterministic, every page distinct and non-zero", () => {
  const a = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  const b = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
  fillRam(a, "pattern");
  fillRam(b, "pattern", 99);
  assert.deepEqual(a.bytes, b.bytes);
  const words = new Uint32Array(a.bytes.buffer);
  const pages = new Set<string>();
  for (let p = 0; p < PAGES; p++) {
    for (const i of [0, 1, 511, 1023]) assert.equal(words[p * 1024 + i], patternWord(p, i));
    assert.equal(isZeroPage(a.words, p * 1024), false);
    assert.equal(a.isTouched(p), true);
    pages.add(a.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE).join(","));
  }
  assert.equal(pages.size, PAGES);
});

Deno.test("isFillMode accepts exactly zero, random and pattern", () => {
  assert.ok(isFillMode("zero") && isFillMode("random") && isFillMode("pattern"));
  assert.ok(!isFillMode("ones") && !isFillMode(""));
});

Deno.test("fillFromImage copies a RAM image's non-zero pages, marks only them touched", async () => {
  const image = new Uint8Array(PAGES * PAGE_SIZE);
  image.fill(7, 3 * PAGE_SIZE, 4 * PAGE_SIZE);
  image[40 * PAGE_SIZE + 100] = 1;
  const path = await Deno.makeTempFile({ suffix: ".img" });
  try {
    await Deno.writeFile(path, image);
    const block = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
    assert.deepEqual(fillFromImage(block, path), { pages: PAGES, nonZero: 2 });
    assert.deepEqual(block.bytes, image);
    for (let p = 0; p < PAGES; p++) assert.equal(block.isTouched(p), p === 3 || p === 40, `${p}`);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("fillFromImage refuses an image whose size is not the block's, naming both", async () => {
  const path = await Deno.makeTempFile({ suffix: ".img" });
  try {
    await Deno.writeFile(path, new Uint8Array(8 * PAGE_SIZE));
    const block = new RamBlock("pc.ram", PAGES * PAGE_SIZE);
    assert.throws(
      () => fillFromImage(block, path),
      /holds 32768 bytes, the guest's RAM 262144: a RAM image must be exactly the size of --ram/,
    );
  } finally {
    await Deno.remove(path);
  }
});
