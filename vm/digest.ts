/**
 * SHA-256 digests of guest RAM, per block and overall, so two guests (e.g. the two
 * ends of a migration) can be compared. RAM lives in SharedArrayBuffers; it is hashed
 * through a bounded copy buffer so a GiB of RAM needs no second GiB.
 */
import { createHash } from "node:crypto";
import type { RamBlock } from "./ram.ts";

/** Digest of one RAM block. */
export interface BlockDigest {
  /** Block name, e.g. `pc.ram`. */
  readonly name: string;
  /** Block length in bytes. */
  readonly length: number;
  /** SHA-256 of the block's bytes, lowercase hex. */
  readonly sha256: string;
}

/** Digest of all RAM: per block, plus an overall SHA-256 over the per-block lines. */
export interface RamDigest {
  /** One entry per block, in block order. */
  readonly blocks: readonly BlockDigest[];
  /** SHA-256 (hex) of the UTF-8 text made of one line `${name} ${length} ${sha256}\n` per block. */
  readonly sha256: string;
}

/** Bytes copied out of shared RAM and hashed at a time. */
export const DIGEST_CHUNK = 4 * 1024 * 1024;
/** The event loop gets a turn after this many bytes, so a long digest does not starve it. */
const YIELD_EVERY = 64 * 1024 * 1024;

/**
 * Hashes every block. The guest should be stopped: bytes written while hashing make
 * the result describe no single moment. Yields to the event loop every 64 MiB.
 */
export async function digestBlocks(blocks: readonly RamBlock[]): Promise<RamDigest> {
  const chunk = new Uint8Array(DIGEST_CHUNK);
  const out: BlockDigest[] = [];
  for (const block of blocks) {
    const hash = createHash("sha256");
    let sinceYield = 0;
    for (let off = 0; off < block.length; off += DIGEST_CHUNK) {
      const end = Math.min(block.length, off + DIGEST_CHUNK);
      chunk.set(block.bytes.subarray(off, end));
      hash.update(end - off === DIGEST_CHUNK ? chunk : chunk.subarray(0, end - off));
      sinceYield += end - off;
      if (sinceYield >= YIELD_EVERY) {
        sinceYield = 0;
        await new Promise<void>((resolve) => setTimeout(resolve, 0));
      }
    }
    out.push({ name: block.name, length: block.length, sha256: hash.digest("hex") });
  }
  return { blocks: out, sha256: overallDigest(out) };
}

/** The overall digest of a list of block digests (see {@link RamDigest.sha256}). */
export function overallDigest(blocks: readonly BlockDigest[]): string {
  const text = blocks.map((b) => `${b.name} ${b.length} ${b.sha256}\n`).join("");
  return createHash("sha256").update(new TextEncoder().encode(text)).digest("hex");
}
