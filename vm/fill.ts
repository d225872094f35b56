/**
 * Preparing guest RAM before start (`--fill`): all zero, seeded random bytes, or a
 * deterministic per-page pattern. Fills run on the main thread before the vCPU starts.
 */
import { PAGE_SIZE, type RamBlock } from "./ram.ts";
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
