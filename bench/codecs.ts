/**
 * The compressors bench/x86.ts measures guest RAM with ({@link Codec}):
 *
 * - zstd through Deno's built-in `node:zlib` (`zstdCompressSync`: the zstd
 *   library compiled into Deno, no package), at level 1, the fast level a
 *   migration would use;
 * - LZ4 through the npm package `lz4-wasm-nodejs` (lz4_flex compiled to
 *   WebAssembly, no native build step), its one level. Sizes are of the raw LZ4
 *   block: the package's 4-byte length prefix is not counted.
 *
 * Each loader checks a round trip before it hands its codec out, and says why when
 * a codec cannot be had, so a report can name what is missing instead of failing.
 * @module
 */
import zlib from "node:zlib";
import type { Codec } from "./ram_makeup.ts";

/** A codec, or why it is not available here. */
export type LoadedCodec = Codec | { readonly name: string; readonly unavailable: string };

/** True when the codec compresses and decompresses one page of text and of zeros unchanged. */
function roundTrips(codec: Codec): boolean {
  const text = new TextEncoder().encode("ferry ".repeat(700)).subarray(0, 4096);
  for (const input of [text, new Uint8Array(4096)]) {
    const back = codec.decompress(codec.compress(input), input.length);
    if (back.length !== input.length || back.some((x, i) => x !== input[i])) return false;
  }
  return true;
}

/** Checks `codec` and returns it, or the reason it cannot be used. */
function checked(codec: Codec): LoadedCodec {
  try {
    return roundTrips(codec) ? codec : { name: codec.name, unavailable: "round trip failed" };
  } catch (e) {
    return { name: codec.name, unavailable: (e as Error).message };
  }
}

/** zstd at `level` through node:zlib. */
export function zstdCodec(level = 1): LoadedCodec {
  const name = `zstd -${level}`;
  if (typeof zlib.zstdCompressSync !== "function") {
    return { name, unavailable: "node:zlib has no zstdCompressSync in this Deno" };
  }
  const options = { params: { [zlib.constants.ZSTD_c_compressionLevel]: level } };
  return checked({
    name,
    compress: (input) => zlib.zstdCompressSync(input, options),
    decompress: (compressed) => zlib.zstdDecompressSync(compressed),
  });
}

/** LZ4 (block format) through the WebAssembly package lz4-wasm-nodejs. */
export async function lz4Codec(): Promise<LoadedCodec> {
  const name = "lz4";
  let lz4: { compress(b: Uint8Array): Uint8Array; decompress(b: Uint8Array): Uint8Array };
  try {
    lz4 = await import("lz4-wasm-nodejs");
  } catch (e) {
    return { name, unavailable: `cannot load lz4-wasm-nodejs: ${(e as Error).message}` };
  }
  return checked({
    name,
    // The package prepends the input length (u32 little-endian) to the LZ4 block.
    compress: (input) => lz4.compress(input).subarray(4),
    decompress: (compressed, size) => {
      const framed = new Uint8Array(compressed.length + 4);
      new DataView(framed.buffer).setUint32(0, size, true);
      framed.set(compressed, 4);
      return lz4.decompress(framed);
    },
  });
}

/** True when `c` can be used. */
export function isCodec(c: LoadedCodec): c is Codec {
  return !("unavailable" in c);
}
