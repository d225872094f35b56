/**
 * Preparing guest RAM before start (`--fill`): all zero, seeded random bytes, or a
 * deterministic per-page pattern. Fills run on the main thread before the vCPU starts.
 */
import { isZeroPage, PAGE_SIZE, type RamBlock } from "./ram.ts";
import { xorshiftSeed } from "./prng.ts";

/** The `--fill` modes. */
export const FILL_MODES = ["zero", "random", "pattern"] as const;

/** One of {@link FILL_MODES}. */
export type FillMode = typeof FILL_MODES[number];

/** Seed used when none is given, so fills are reproducible by default. */
export const DEFAULT_FILL_SEED = 0x5eed;

const WORDS_PER_PAGE = PAGE_SIZE / 4;

/**
 * Fills a block:
 * - `zero`: RAM becomes all zero. A fresh block already is, so only pages that may
 *   hold data (touched or dirty) are cleared, and no page is faulted in needlessly;
 *   the touched map is then cleared.
 * - `random`: every byte from a seeded xorshift128 stream (same seed → same bytes).
 * - `pattern`: each 32-bit word derived from its page index and position
 *   ({@link patternWord}); every page is distinct and non-zero.
 * `random` and `pattern` mark every page touched; none of them marks pages dirty
 * (a migration sends everything in its first pass anyway).
 */
export function fillRam(block: RamBlock, mode: FillMode, seed: number = DEFAULT_FILL_SEED): void {
  switch (mode) {
    case "zero":
      return fillZero(block);
    case "random":
      fillRandom(block, seed);
      return block.touchAll();
    case "pattern":
      fillPattern(block);
      return block.touchAll();
    default:
      throw new TypeError(
        `Unknown fill mode "${String(mode)}" (expected ${FILL_MODES.join(", ")})`,
      );
  }
}

/** True when `text` names a fill mode. */
export function isFillMode(text: string): text is FillMode {
  return (FILL_MODES as readonly string[]).includes(text);
}

/** The unsigned 32-bit word the `pattern` fill stores at word `index` (0-1023) of page `page`. */
export function patternWord(page: number, index: number): number {
  return (Math.imul(page + 1, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0;
}

function fillZero(block: RamBlock): void {
  const { bytes, touched, dirty } = block;
  for (let w = 0; w < touched.length; w++) {
    const bits = touched[w] | dirty[w];
    if (bits === 0) continue;
    for (let b = 0; b < 32; b++) {
      const page = w * 32 + b;
      if ((bits & (1 << b)) !== 0 && page < block.pages) {
        bytes.fill(0, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      }
    }
    touched[w] = 0;
  }
}

function fillRandom(block: RamBlock, seed: number): void {
  const words = new Uint32Array(block.bytes.buffer, block.bytes.byteOffset, block.length / 4);
  let [x, y, z, w] = xorshiftSeed(seed);
  const n = words.length;
  for (let i = 0; i < n; i++) {
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
    words[i] = w;
  }
}

function fillPattern(block: RamBlock): void {
  const words = new Uint32Array(block.bytes.buffer, block.bytes.byteOffset, block.length / 4);
  const columns = new Int32Array(WORDS_PER_PAGE);
  for (let i = 0; i < WORDS_PER_PAGE; i++) columns[i] = Math.imul(i + 1, 0x85ebca6b);
  for (let page = 0; page < block.pages; page++) {
    const row = Math.imul(page + 1, 0x9e3779b1);
    const base = page * WORDS_PER_PAGE;
    for (let i = 0; i < WORDS_PER_PAGE; i++) words[base + i] = row ^ columns[i];
  }
}

/** What {@link fillFromImage} loaded. */
export interface ImageFill {
  /** Pages of the image. */
  readonly pages: number;
  /** Pages that hold a non-zero byte (now touched). */
  readonly nonZero: number;
}

/** Bytes read from an image at a time. */
const IMAGE_CHUNK = 1 << 20;

/**
 * Fills a block from a RAM image file (`--fill image:PATH`), e.g. a real guest's
 * RAM saved by `deno task bench:image`. The file's size must equal the block's:
 * an image is a snapshot of exactly that much RAM, and a shorter or longer one
 * would leave part of it unexplained. Non-zero pages are copied and marked
 * touched; zero pages are never written, so they stay untouched (and unfaulted),
 * as in a guest that never wrote them. Throws a RangeError naming both sizes.
 */
export function fillFromImage(block: RamBlock, path: string): ImageFill {
  using file = Deno.openSync(path, { read: true });
  const size = file.statSync().size;
  if (size !== block.length) {
    throw new RangeError(
      `the image ${path} holds ${size} bytes, the guest's RAM ${block.length}: a RAM image ` +
        `must be exactly the size of --ram (it was saved from a guest of ${
          (size / 2 ** 20).toFixed(1)
        } MiB)`,
    );
  }
  const chunk = new Uint8Array(IMAGE_CHUNK);
  const words = new Int32Array(chunk.buffer);
  let nonZero = 0;
  for (let at = 0; at < size;) {
    const want = Math.min(IMAGE_CHUNK, size - at);
    let got = 0;
    while (got < want) {
      const n = file.readSync(chunk.subarray(got, want));
      if (n === null) throw new RangeError(`the image ${path} ended at byte ${at + got}`);
      got += n;
    }
    for (let off = 0; off < want; off += PAGE_SIZE) {
      if (isZeroPage(words, off / 4)) continue;
      block.bytes.set(chunk.subarray(off, off + PAGE_SIZE), at + off);
      block.markTouched((at + off) / PAGE_SIZE);
      nonZero++;
    }
    at += want;
  }
  return { pages: block.pages, nonZero };
}
