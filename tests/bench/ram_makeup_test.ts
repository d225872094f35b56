import assert from "node:assert/strict";
import { isCodec, lz4Codec, zstdCodec } from "../../bench/codecs.ts";
import { type Codec, compressPages, pageCensus } from "../../bench/ram_makeup.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";

/** An image of `contents.length` pages; each page filled by its entry (null: zeros). */
function image(contents: (((i: number) => number) | null)[]): Uint8Array {
  const bytes = new Uint8Array(contents.length * PAGE_SIZE);
  contents.forEach((fill, p) => {
    if (fill) { for (let i = 0; i < PAGE_SIZE; i++) bytes[p * PAGE_SIZE + i] = fill(i); }
  });
  return bytes;
}

Deno.test("pageCensus counts zero, duplicate and distinct pages exactly", () => {
  const a = (i: number) => i & 0xff;
  const b = (i: number) => (i * 7) & 0xff;
  // Differs from `a` in one byte only (the last), which a key of the first words would miss.
  const aLast = (i: number) => i === PAGE_SIZE - 1 ? 1 : a(i);
  const lone = (i: number) => (i === 100 ? 9 : 0);
  const census = pageCensus(image([null, a, b, a, null, aLast, a, lone, b]));
  assert.equal(census.pages, 9);
  assert.equal(census.zero, 2);
  assert.equal(census.nonZero, 7);
  // a, b, aLast, lone are the distinct contents; two more a's and one more b repeat.
  assert.equal(census.distinct, 4);
  assert.equal(census.duplicate, 3);
  assert.deepEqual([...census.nonZeroPages], [1, 2, 3, 5, 6, 7, 8]);
});

Deno.test("pageCensus of all zeros and of no pages", () => {
  assert.deepEqual(
    { ...pageCensus(new Uint8Array(4 * PAGE_SIZE)), nonZeroPages: undefined },
    { pages: 4, zero: 4, nonZero: 0, distinct: 0, duplicate: 0, nonZeroPages: undefined },
  );
  assert.equal(pageCensus(new Uint8Array(0)).pages, 0);
  assert.throws(() => pageCensus(new Uint8Array(100)), RangeError);
});

/** A codec that drops trailing zeros (and says so in its output), for exact counts. */
const trimZeros: Codec = {
  name: "trim",
  compress(input) {
    let end = input.length;
    while (end > 0 && input[end - 1] === 0) end--;
    return input.slice(0, end);
  },
  decompress(compressed, size) {
    const out = new Uint8Array(size);
    out.set(compressed);
    return out;
  },
};

Deno.test("compressPages counts per page and per chunk, sending incompressible units raw", () => {
  // Page 0: 10 bytes then zeros; page 1: full (nothing to trim); page 2 zeros; page 3: 1 byte.
  const bytes = image([
    (i) => (i < 10 ? 1 : 0),
    () => 5,
    null,
    (i) => (i === 0 ? 3 : 0),
  ]);
  const pages = pageCensus(bytes).nonZeroPages;
  assert.deepEqual([...pages], [0, 1, 3]);
  const perPage = compressPages(bytes, pages, trimZeros, { unitBytes: PAGE_SIZE });
  assert.equal(perPage.units, 3);
  assert.equal(perPage.rawBytes, 3 * PAGE_SIZE);
  assert.equal(perPage.compressedBytes, 10 + PAGE_SIZE + 1);
  assert.equal(perPage.incompressible, 1);
  assert.equal(perPage.sentBytes, 10 + PAGE_SIZE + 1);
  assert.equal(perPage.checked, 3);
  assert.equal(perPage.ratio, (3 * PAGE_SIZE) / (PAGE_SIZE + 11));
  // Two pages per unit: [0, 1] laid end to end trims nothing, [3] alone trims to 1 byte.
  const chunks = compressPages(bytes, pages, trimZeros, { unitBytes: 2 * PAGE_SIZE });
  assert.equal(chunks.units, 2);
  assert.equal(chunks.rawBytes, 3 * PAGE_SIZE);
  assert.equal(chunks.compressedBytes, 2 * PAGE_SIZE + 1);
  assert.equal(chunks.incompressible, 1);
  assert.throws(() => compressPages(bytes, pages, trimZeros, { unitBytes: 100 }), RangeError);
});

Deno.test("compressPages throws when a codec does not round-trip", () => {
  const lossy: Codec = { ...trimZeros, decompress: (_c, size) => new Uint8Array(size) };
  const bytes = image([() => 1]);
  assert.throws(
    () => compressPages(bytes, Uint32Array.of(0), lossy, { unitBytes: PAGE_SIZE }),
    /did not round-trip/,
  );
});

Deno.test("zstd and lz4 load, round-trip real pages and shrink repetitive ones", async () => {
  const bytes = image([(i) => "ferry"[i % 5].charCodeAt(0), (i) => (i * 2654435761) >>> 24]);
  for (const codec of [zstdCodec(1), await lz4Codec()]) {
    assert.ok(isCodec(codec), `${codec.name}: ${JSON.stringify(codec)}`);
    const r = compressPages(bytes, Uint32Array.of(0, 1), codec, { unitBytes: PAGE_SIZE });
    assert.equal(r.checked, 2);
    assert.ok(r.compressedBytes < PAGE_SIZE + 200, `${codec.name}: ${r.compressedBytes} bytes`);
  }
});
