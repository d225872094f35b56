/**
 * RAM record headers (docs/ARCHITECTURE.md, "Stream format"): `be64 offset |
 * flags`, then the block name (`u8 len, name`) unless CONTINUE says "the same
 * block as the record before". One encoder for every path that writes them: the
 * general one, the plain-page loop and the run of 32 never-written pages.
 * @module
 */
import { PAGE_SIZE } from "../format/constants.ts";

/** Largest RAM record: header, block name, XBZRLE flag and length, page. */
export const MAX_RECORD = 8 + 1 + 255 + 3 + PAGE_SIZE;
/** Wire bytes of a plain page record after the first of its block. */
export const PLAIN_RECORD = 8 + PAGE_SIZE;
/** 2^32, to split an offset into the header's two 32-bit halves. */
export const TWO32 = 0x100000000;

/** Writes `be64 offset | flags` at `pos` (offset below 2^53, page-aligned); returns pos + 8. */
export function putHeader(buf: Uint8Array, pos: number, offset: number, flags: number): number {
  const hi = offset >= TWO32 ? Math.floor(offset / TWO32) : 0;
  // `|` keeps the low 32 bits of the offset, which is what the low half holds.
  const lo = (offset | flags) >>> 0;
  buf[pos] = hi >>> 24;
  buf[pos + 1] = hi >>> 16;
  buf[pos + 2] = hi >>> 8;
  buf[pos + 3] = hi;
  buf[pos + 4] = lo >>> 24;
  buf[pos + 5] = lo >>> 16;
  buf[pos + 6] = lo >>> 8;
  buf[pos + 7] = lo;
  return pos + 8;
}

/** Writes a block name (`u8 len, bytes`, already encoded) at `pos`; returns the position after it. */
export function putName(buf: Uint8Array, pos: number, name: Uint8Array): number {
  buf[pos] = name.length;
  buf.set(name, pos + 1);
  return pos + 1 + name.length;
}

const encoder = new TextEncoder();
const names = new Map<string, Uint8Array>();

/** A block name's bytes, encoded once (at most 255 bytes: RamBlock checks it). */
export function nameBytes(name: string): Uint8Array {
  let bytes = names.get(name);
  if (!bytes) names.set(name, bytes = encoder.encode(name));
  return bytes;
}
