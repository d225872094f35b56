/**
 * RAM record headers (docs/ARCHITECTURE.md, "Stream format"): `be64 offset |
 * flags`, then the block name (`u8 len, name`) unless CONTINUE says "the same
 * block as the record before". Every path that writes them uses this module: the
 * general one, the plain-page loop and the run of 32 never-written pages.
 * @module
 */
import { PAGE_SIZE, RamFlag } from "../format/constants.ts";

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

/**
 * Writes the 32 ZERO records (`header | ZERO | CONTINUE`, fill byte 0) of the 32
 * pages from `firstPage`, a multiple of 32, at `pos`; returns pos + 288. The 32
 * headers differ only in bytes 5 and 6, so they are written as such.
 */
export function putZeroWord(buf: Uint8Array, pos: number, firstPage: number): number {
  const hi = firstPage >>> 20;
  const b4 = (firstPage >>> 12) & 0xff;
  const b5 = (firstPage >>> 4) & 0xff;
  const low = RamFlag.ZERO | RamFlag.CONTINUE;
  for (let i = 0; i < 32; i++, pos += 9) {
    buf[pos] = hi >>> 24;
    buf[pos + 1] = hi >>> 16;
    buf[pos + 2] = hi >>> 8;
    buf[pos + 3] = hi;
    buf[pos + 4] = b4;
    buf[pos + 5] = b5 + (i >>> 4);
    buf[pos + 6] = (i & 15) << 4;
    buf[pos + 7] = low;
    buf[pos + 8] = 0;
  }
  return pos;
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

/** Pages in one compressed run's group: one word of the migration bitmap. */
export const GROUP_PAGES = 32;
/** Bytes after a compressed run's header and name: method, mask, check, length. */
export const COMPRESSED_FIELDS = 1 + 4 + 4 + 4;
/** Bytes after a reference's header and name: the target's offset. */
export const REF_FIELDS = 8;

/**
 * The check of a compressed run: the sum (mod 2^32) of the ferry-d32 digests of
 * the pages it carries, so damaged data that still decompresses is caught where
 * it lies.
 */
export function runCheck(digests: ArrayLike<number>, n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum = (sum + digests[i]) >>> 0;
  return sum;
}

/**
 * Writes a compressed run's fields after its header (`be64 group | COMPRESSED`)
 * at `pos`: `u8 method, be32 mask, be32 check, be32 length`; returns the
 * position of the compressed data (`length` bytes), which the caller writes.
 */
export function putCompressedFields(
  buf: Uint8Array,
  pos: number,
  method: number,
  mask: number,
  check: number,
  length: number,
): number {
  buf[pos] = method;
  putBe32(buf, pos + 1, mask);
  putBe32(buf, pos + 5, check);
  putBe32(buf, pos + 9, length);
  return pos + COMPRESSED_FIELDS;
}

/** Writes a reference's field after its header (`be64 offset | REF`): the target's offset. */
export function putRefField(buf: Uint8Array, pos: number, target: number): number {
  putBe32(buf, pos, target >= TWO32 ? Math.floor(target / TWO32) : 0);
  putBe32(buf, pos + 4, target >>> 0);
  return pos + REF_FIELDS;
}

function putBe32(buf: Uint8Array, pos: number, v: number): void {
  buf[pos] = v >>> 24;
  buf[pos + 1] = v >>> 16;
  buf[pos + 2] = v >>> 8;
  buf[pos + 3] = v;
}
