import assert from "node:assert/strict";
import {
  type Codec,
  CODEC_ID,
  codecById,
  compress,
  DecompressError,
  decompressExact,
} from "../../../engine/format/compression.ts";

const CODECS: Codec[] = ["zstd", "lz4"];

/** 128 KiB of text-like bytes: compressible, not trivially. */
function sample(): Uint8Array {
  const words = ["ferry", "migrates", "a", "guest", "page", "by", "page", "over", "tcp", "\n"];
  const out = new Uint8Array(32 * 4096);
  let x = 7;
  let pos = 0;
  while (pos < out.length) {
    x = (x * 1103515245 + 12345) >>> 0;
    const word = new TextEncoder().encode(words[(x >>> 16) % words.length] + " ");
    out.set(word.subarray(0, out.length - pos), pos);
    pos += word.length;
  }
  return out;
}

Deno.test("codecById() names each method byte and nothing else", () => {
  assert.equal(codecById(CODEC_ID.zstd), "zstd");
  assert.equal(codecById(CODEC_ID.lz4), "lz4");
  for (const id of [0, 3, 255]) assert.equal(codecById(id), undefined);
});

for (const codec of CODECS) {
  Deno.test(`compress(${codec}) → decompressExact() gives the input back, smaller on the wire`, () => {
    const input = sample();
    for (const level of [1, 3, 19]) {
      const packed = compress(codec, input, level);
      assert.ok(packed.length < input.length / 2, `${packed.length} bytes`);
      assert.deepEqual(decompressExact(codec, packed, input.length), input);
    }
    const zeros = new Uint8Array(4096);
    assert.deepEqual(decompressExact(codec, compress(codec, zeros, 1), 4096), zeros);
  });

  Deno.test(`decompressExact(${codec}) never gives more than the size asked for (a bomb stops there)`, () => {
    // 8 MiB of zeros compress to a few hundred bytes.
    const bomb = compress(codec, new Uint8Array(8 << 20), 1);
    assert.ok(bomb.length < 64 << 10);
    assert.throws(() => decompressExact(codec, bomb, 4096), DecompressError);
  });

  Deno.test(`decompressExact(${codec}) refuses data that gives fewer bytes than asked for`, () => {
    const packed = compress(codec, sample().subarray(0, 8192), 1);
    assert.throws(() => decompressExact(codec, packed, 3 * 4096), DecompressError);
  });

  Deno.test(`decompressExact(${codec}) refuses garbage and truncated data with a DecompressError`, () => {
    const input = sample();
    const packed = compress(codec, input, 1);
    const garbage = new Uint8Array(200).fill(0xff);
    assert.throws(() => decompressExact(codec, garbage, input.length), DecompressError);
    const truncated = packed.slice(0, packed.length >> 1);
    assert.throws(() => decompressExact(codec, truncated, input.length), DecompressError);
    assert.throws(() => decompressExact(codec, new Uint8Array(0), 4096), DecompressError);
  });
}

Deno.test("decompressExact() says which codec and which sizes in its message", () => {
  const packed = compress("zstd", new Uint8Array(4096), 1);
  assert.throws(
    () => decompressExact("zstd", packed, 8192),
    /zstd data decompresses to 4096 bytes, the record says 8192/,
  );
});
