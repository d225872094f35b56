/**
 * What a guest's RAM is made of, page by page: how many pages are zero, how many
 * non-zero pages repeat another page's content, and how well the non-zero pages
 * compress, one 4 KiB page at a time and in 1 MiB chunks. bench/x86.ts runs it on
 * the x86 guest's real RAM, to tell what zero detection, deduplication or a
 * compressing transport could save a migration.
 * @module
 */
import { isSamePage, isZeroPage, PAGE_SIZE } from "../vm/ram.ts";

/** The page census of one RAM image. */
export interface PageCensus {
  /** Pages in the image. */
  readonly pages: number;
  /** Pages of all zero bytes. */
  readonly zero: number;
  /** Pages with at least one non-zero byte. */
  readonly nonZero: number;
  /** Distinct contents among the non-zero pages. */
  readonly distinct: number;
  /** Non-zero pages whose content equals an earlier page's: `nonZero - distinct`. */
  readonly duplicate: number;
  /** Indices of the non-zero pages, in address order. */
  readonly nonZeroPages: Uint32Array;
}

/**
 * A 52-bit content key of the page at byte `at`: two independent multiplicative
 * hashes of its 32-bit words. Equal pages have equal keys; pages with equal keys
 * are compared byte for byte before they count as equal.
 */
function pageKey(words: Int32Array, first: number): number {
  let a = 0x811c9dc5 | 0;
  let b = 0x01000193 | 0;
  const end = first + PAGE_SIZE / 4;
  for (let i = first; i < end; i++) {
    const w = words[i];
    a = Math.imul(a ^ w, 0x9e3779b1);
    b = Math.imul(b + w, 0x85ebca77) ^ (b >>> 13);
  }
  a ^= a >>> 16;
  b ^= b >>> 15;
  return (a >>> 0) * 0x100000 + ((b >>> 0) & 0xfffff);
}

/**
 * Counts zero, duplicate and distinct pages of `bytes` (a whole number of 4 KiB
 * pages, starting 4-byte aligned). Duplicates are exact: equal bytes, not equal
 * hashes.
 */
export function pageCensus(bytes: Uint8Array): PageCensus {
  if (bytes.length % PAGE_SIZE !== 0 || bytes.byteOffset % 4 !== 0) {
    throw new RangeError(`pageCensus needs whole ${PAGE_SIZE}-byte pages at a 4-byte boundary`);
  }
  const words = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const pages = bytes.length / PAGE_SIZE;
  const nonZeroPages: number[] = [];
  /** Content key → the first page of each distinct content with that key. */
  const seen = new Map<number, number[]>();
  let distinct = 0;
  for (let p = 0; p < pages; p++) {
    const first = p * (PAGE_SIZE / 4);
    if (isZeroPage(words, first)) continue;
    nonZeroPages.push(p);
    const key = pageKey(words, first);
    const firsts = seen.get(key);
    if (firsts === undefined) {
      seen.set(key, [p]);
      distinct++;
    } else if (!firsts.some((q) => isSamePage(words, q * (PAGE_SIZE / 4), first))) {
      firsts.push(p);
      distinct++;
    }
  }
  return {
    pages,
    zero: pages - nonZeroPages.length,
    nonZero: nonZeroPages.length,
    distinct,
    duplicate: nonZeroPages.length - distinct,
    nonZeroPages: Uint32Array.from(nonZeroPages),
  };
}

/** True when `a` and `b` hold the same bytes. */
function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A compressor as the census sees it: bytes in, compressed bytes out, and back. */
export interface Codec {
  /** How the codec is named in reports, e.g. `zstd -1`. */
  readonly name: string;
  compress(input: Uint8Array): Uint8Array;
  /** Inverse of {@link compress}; `size` is the original length. */
  decompress(compressed: Uint8Array, size: number): Uint8Array;
}

/** How well one codec compressed a set of pages, in one unit size. */
export interface CompressionResult {
  readonly codec: string;
  /** Bytes per compressed unit: one page or one chunk. */
  readonly unitBytes: number;
  /** Units compressed. */
  readonly units: number;
  /** Bytes in. */
  readonly rawBytes: number;
  /** Bytes out, as the codec produced them. */
  readonly compressedBytes: number;
  /** Units whose compressed form was not smaller than the unit. */
  readonly incompressible: number;
  /**
   * Bytes out when an incompressible unit is sent raw instead, as a transport
   * would: the sum of min(compressed, raw) over the units.
   */
  readonly sentBytes: number;
  /** rawBytes / sentBytes. */
  readonly ratio: number;
  /** Compression time, ms (wall clock on this thread). */
  readonly compressMs: number;
  /** Units whose round trip was checked byte for byte. */
  readonly checked: number;
}

/** Options of {@link compressPages}. */
export interface CompressOptions {
  /**
   * Bytes per compressed unit: PAGE_SIZE compresses each page alone, a multiple of
   * it compresses that many bytes of the pages laid end to end in address order.
   */
  readonly unitBytes: number;
  /** Check the round trip of every n-th unit (default 1: every unit). */
  readonly checkEvery?: number;
}

/**
 * Compresses the pages `pages` of `bytes` with `codec` in units of
 * `opts.unitBytes`, checks round trips, and counts what went in and out. Throws
 * when a round trip does not give back the input.
 */
export function compressPages(
  bytes: Uint8Array,
  pages: Uint32Array,
  codec: Codec,
  opts: CompressOptions,
): CompressionResult {
  const { unitBytes } = opts;
  if (unitBytes <= 0 || unitBytes % PAGE_SIZE !== 0) {
    throw new RangeError(`unitBytes must be a positive multiple of ${PAGE_SIZE}`);
  }
  const checkEvery = Math.max(1, opts.checkEvery ?? 1);
  const perUnit = unitBytes / PAGE_SIZE;
  const unit = new Uint8Array(unitBytes);
  let units = 0;
  let rawBytes = 0;
  let compressedBytes = 0;
  let sentBytes = 0;
  let incompressible = 0;
  let compressMs = 0;
  let checked = 0;
  for (let i = 0; i < pages.length; i += perUnit) {
    const n = Math.min(perUnit, pages.length - i);
    let input: Uint8Array;
    if (n === 1) {
      input = bytes.subarray(pages[i] * PAGE_SIZE, (pages[i] + 1) * PAGE_SIZE);
    } else {
      for (let k = 0; k < n; k++) {
        const at = pages[i + k] * PAGE_SIZE;
        unit.set(bytes.subarray(at, at + PAGE_SIZE), k * PAGE_SIZE);
      }
      input = unit.subarray(0, n * PAGE_SIZE);
    }
    const t = performance.now();
    const out = codec.compress(input);
    compressMs += performance.now() - t;
    if (units % checkEvery === 0) {
      const back = codec.decompress(out, input.length);
      if (!equalBytes(back, input)) {
        throw new Error(`${codec.name}: unit ${units} did not round-trip`);
      }
      checked++;
    }
    units++;
    rawBytes += input.length;
    compressedBytes += out.length;
    if (out.length >= input.length) incompressible++;
    sentBytes += Math.min(out.length, input.length);
  }
  return {
    codec: codec.name,
    unitBytes,
    units,
    rawBytes,
    compressedBytes,
    incompressible,
    sentBytes,
    ratio: sentBytes === 0 ? NaN : rawBytes / sentBytes,
    compressMs,
    checked,
  };
}

/** The census of an image and how its non-zero pages compress. */
export interface MakeUp {
  readonly census: PageCensus;
  /** One result per codec and unit size, in that order. */
  readonly compression: CompressionResult[];
  /** ms the census took. */
  readonly censusMs: number;
}

/**
 * The census of `bytes` and the compression of its non-zero pages with each of
 * `codecs` in each of `units` (bytes per compressed unit); round trips of single
 * pages are checked every 16th page, of larger units every one.
 */
export function makeUp(
  bytes: Uint8Array,
  codecs: readonly Codec[],
  units: readonly number[],
): MakeUp {
  const t = performance.now();
  const census = pageCensus(bytes);
  const censusMs = performance.now() - t;
  const compression: CompressionResult[] = [];
  for (const codec of codecs) {
    for (const unitBytes of units) {
      compression.push(
        compressPages(bytes, census.nonZeroPages, codec, {
          unitBytes,
          checkEvery: unitBytes === PAGE_SIZE ? 16 : 1,
        }),
      );
    }
  }
  return { census, compression, censusMs };
}
