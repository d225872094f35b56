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
 * Both go through the engine's own framing (engine/format/compression.ts), so the
 * census measures what a migration would send. Each loader checks a round trip
 * before it hands its codec out, and says why when
 * a codec cannot be had, so a report can name what is missing instead of failing.
 * @module
 */
import zlib from "node:zlib";
import type { Codec } from "./ram_makeup.ts";
import { compress, decompressExact } from "../engine/format/compression.ts";

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

/** zstd at `level` through node:zlib, as the engine compresses (engine/format/compression.ts). */
export function zstdCodec(level = 1): LoadedCodec {
  const name = `zstd -${level}`;
  if (typeof zlib.zstdCompressSync !== "function") {
    return { name, unavailable: "node:zlib has no zstdCompressSync in this Deno" };
  }
  return checked({
    name,
    compress: (input) => compress("zstd", input, level),
    decompress: (compressed, size) => decompressExact("zstd", compressed, size),
  });
}

/** LZ4 (block format) through lz4-wasm-nodejs, as the engine compresses. */
export function lz4Codec(): Promise<LoadedCodec> {
  return Promise.resolve(checked({
    name: "lz4",
    compress: (input) => compress("lz4", input, 1),
    decompress: (compressed, size) => decompressExact("lz4", compressed, size),
  }));
}

/** True when `c` can be used. */
export function isCodec(c: LoadedCodec): c is Codec {
  return !("unavailable" in c);
}
