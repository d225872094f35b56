import { PAGE_SIZE } from "./constants.ts";

/** The byte before an XBZRLE record's length (QEMU's ENCODING_FLAG_XBZRLE). */
export const ENCODING_FLAG_XBZRLE = 0x01;

/** A malformed XBZRLE encoding; `position` is the byte inside the encoding. */
export class XbzrleError extends Error {
  override readonly name = "XbzrleError";
  constructor(readonly position: number, reason: string) {
    super(`Cannot decode XBZRLE page: ${reason} at encoded byte ${position}`);
  }
}

function putRun(dst: Uint8Array, d: number, n: number): number {
  if (n < 0x80) {
    dst[d] = n;
    return d + 1;
  }
  dst[d] = (n & 0x7f) | 0x80;
  dst[d + 1] = n >>> 7;
  return d + 2;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** First byte index ≥ i (and < len) where the pages differ, or len; compares 32 bits at a time. */
function firstDiff(
  old: Uint8Array,
  cur: Uint8Array,
  ow: Int32Array | null,
  cw: Int32Array | null,
  i: number,
  len: number,
): number {
  if (ow === null || cw === null) {
    while (i < len && old[i] === cur[i]) i++;
    return i;
  }
  while ((i & 3) !== 0 && i < len) {
    if (old[i] !== cur[i]) return i;
    i++;
  }
  // Past the last whole word (len not a multiple of 4): the tail below would restart behind i.
  if (i >= len) return len;
  let w = i >> 2;
  const nw = len >> 2;
  while (w < nw && ow[w] === cw[w]) w++;
  if (w === nw) {
    i = nw << 2;
    while (i < len && old[i] === cur[i]) i++;
    return i;
  }
  const x = ow[w] ^ cw[w];
  return (w << 2) + ((31 - Math.clz32(x & -x)) >> 3);
}

/**
 * Encodes `cur` against `old` (both `PAGE_SIZE` bytes, or `len`) into `dst` as QEMU's
 * XBZRLE: pairs of (unchanged run, changed run + its bytes), run lengths in
 * ULEB128 of at most two bytes, a trailing unchanged run omitted. Returns the
 * encoded length — 0 when the pages are identical — or -1 when the encoding would
 * not fit in `dst.length` bytes (send the page plainly: an overflow). Unchanged
 * runs are skipped 32 bits at a time when both pages are 4-byte aligned.
 */
export function xbzrleEncode(
  old: Uint8Array,
  cur: Uint8Array,
  dst: Uint8Array,
  len = PAGE_SIZE,
): number {
  const aligned = LITTLE_ENDIAN && ((old.byteOffset | cur.byteOffset) & 3) === 0;
  const ow = aligned ? new Int32Array(old.buffer, old.byteOffset, len >> 2) : null;
  const cw = aligned ? new Int32Array(cur.buffer, cur.byteOffset, len >> 2) : null;
  const dlen = dst.length;
  let i = 0;
  let d = 0;
  while (i < len) {
    // Unchanged run.
    const z = firstDiff(old, cur, ow, cw, i, len);
    if (z === len) return d;
    if (d + 2 > dlen) return -1;
    d = putRun(dst, d, z - i);
    i = z;
    // Changed run: stops at a byte that matches again.
    let n = i + 1;
    while (n < len && old[n] !== cur[n]) n++;
    const nzrun = n - i;
    if (d + 2 + nzrun > dlen) return -1;
    d = putRun(dst, d, nzrun);
    for (let k = i; k < n; k++) dst[d++] = cur[k];
    i = n;
  }
  return d;
}

function getRun(src: Uint8Array, i: number, end: number): [value: number, bytes: number] {
  const b0 = src[i];
  if ((b0 & 0x80) === 0) return [b0, 1];
  if (i + 1 >= end) throw new XbzrleError(i, "run length cut off");
  const b1 = src[i + 1];
  if (b1 & 0x80) throw new XbzrleError(i, "run length longer than two bytes");
  return [(b0 & 0x7f) | (b1 << 7), 2];
}

/**
 * Applies an XBZRLE encoding (`src[0..slen)`) onto `page` (which holds the old
 * contents) in place, strictly as QEMU's decoder: only the first unchanged run may
 * be empty, a changed run must not be empty, nothing may go past `len` bytes of
 * page or past the encoding. Returns the bytes of page covered. Throws XbzrleError.
 * Validates the whole encoding before writing a byte, so a bad record leaves the
 * page untouched.
 */
export function xbzrleDecode(src: Uint8Array, page: Uint8Array, len = PAGE_SIZE): number {
  const slen = src.length;
  // Pass 1: validate. Pass 2: apply.
  for (let pass = 0; pass < 2; pass++) {
    let i = 0;
    let d = 0;
    while (i < slen) {
      if (slen - i < 2) throw new XbzrleError(i, "encoding ends inside a run pair");
      let [count, n] = getRun(src, i, slen);
      if (i !== 0 && count === 0) throw new XbzrleError(i, "empty unchanged run");
      i += n;
      d += count;
      if (d > len) throw new XbzrleError(i, `output past ${len} bytes`);
      if (slen - i < 2) throw new XbzrleError(i, "encoding ends before a changed run");
      [count, n] = getRun(src, i, slen);
      if (count === 0) throw new XbzrleError(i, "empty changed run");
      i += n;
      if (d + count > len) throw new XbzrleError(i, `output past ${len} bytes`);
      if (i + count > slen) throw new XbzrleError(i, "changed run past the end of the encoding");
      if (pass === 1) {
        if (count > 64) page.set(src.subarray(i, i + count), d);
        else for (let k = 0; k < count; k++) page[d + k] = src[i + k];
      }
      d += count;
      i += count;
    }
    if (pass === 1) return d;
  }
  return 0;
}
