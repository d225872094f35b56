/**
 * The compressors of ferry's compressed RAM runs (docs/ARCHITECTURE.md, "Stream
 * format"), in the spirit of QEMU's `multifd-compression`: zstd from the zstd
 * library compiled into Deno (`node:zlib`), and LZ4 from the npm package
 * `lz4-wasm-nodejs` (lz4_flex in WebAssembly). No codec is written here: this
 * module only frames their output and bounds what a decompression may produce.
 * @module
 */
import zlib from "node:zlib";
import { compress as lz4Compress, decompress as lz4Decompress } from "lz4-wasm-nodejs";

/** The `compress_method` parameter's values. */
export const COMPRESS_METHODS = ["none", "zstd", "lz4"] as const;
/** One of {@link COMPRESS_METHODS}. */
export type CompressMethod = typeof COMPRESS_METHODS[number];
/** A method that compresses. */
export type Codec = Exclude<CompressMethod, "none">;

/** The method byte of a compressed run record. */
export const CODEC_ID: Readonly<Record<Codec, number>> = { zstd: 1, lz4: 2 };

/** The method a record's method byte names, or undefined for an unknown byte. */
export function codecById(id: number): Codec | undefined {
  return id === CODEC_ID.zstd ? "zstd" : id === CODEC_ID.lz4 ? "lz4" : undefined;
}

/** Thrown when compressed data does not decompress to exactly the size it must have. */
export class DecompressError extends Error {
  override readonly name = "DecompressError";
}

/** zstd's options per level (built once). */
const zstdOptions = new Map<number, { params: Record<number, number> }>();

/**
 * Compresses `input` with `codec` (`level` is zstd's; LZ4 has one level). The
 * result is the codec's own frame: a zstd frame, or an LZ4 block.
 */
export function compress(codec: Codec, input: Uint8Array, level: number): Uint8Array {
  if (codec === "zstd") {
    let options = zstdOptions.get(level);
    if (!options) {
      options = { params: { [zlib.constants.ZSTD_c_compressionLevel]: level } };
      zstdOptions.set(level, options);
    }
    const out = zlib.zstdCompressSync(input, options);
    return new Uint8Array(out.buffer, out.byteOffset, out.length);
  }
  // The package puts the input's length (u32 little-endian) before the LZ4 block;
  // the record carries the size already, so the block goes alone.
  return lz4Compress(input).subarray(4);
}

/**
 * Decompresses `data` with `codec`, which must give exactly `size` bytes. A
 * decompression never produces more than `size` bytes (a "bomb" stops there), and
 * anything but exactly `size` bytes, or data the codec rejects, throws a
 * {@link DecompressError} saying why.
 */
export function decompressExact(codec: Codec, data: Uint8Array, size: number): Uint8Array {
  let out: Uint8Array;
  try {
    if (codec === "zstd") {
      out = zlib.zstdDecompressSync(data, { maxOutputLength: size });
    } else {
      // The package's decoder reads the output size from the first four bytes and
      // never writes past it: the size is ours, not the stream's.
      const framed = new Uint8Array(data.length + 4);
      new DataView(framed.buffer).setUint32(0, size, true);
      framed.set(data, 4);
      out = lz4Decompress(framed);
    }
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new DecompressError(`${codec} data does not decompress to ${size} bytes: ${why}`);
  }
  if (out.length !== size) {
    throw new DecompressError(
      `${codec} data decompresses to ${out.length} bytes, the record says ${size}`,
    );
  }
  // A plain view, whichever codec made it (node:zlib answers with a Buffer).
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}
