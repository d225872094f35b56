/**
 * The destination's received-pages bitmap, sent to the source when an interrupted
 * pre-copy resumes (docs/ARCHITECTURE.md, "Resuming an interrupted pre-copy"; QEMU's
 * postcopy recovery sends its `receivedmap` the same way, as MIG_RP_MSG_RECV_BITMAP).
 *
 * The destination's digest table (engine/integrity.ts) already is that bitmap: an
 * entry is 0 exactly when this stream never wrote the page. So the bitmap travels
 * with each held page's entry, and the source compares it with its own entry for
 * the page, which describes what it sent last. A page whose entries are equal is
 * held as last sent; any other page (never received, or its last record lost in
 * flight) goes again. The destination's sums close the message: the source checks
 * them against the entries it read, so a damaged bitmap is refused, not trusted.
 *
 * Return-path messages (`be16 type, be16 len, payload`):
 * - RECV_BITMAP 0x4602: `u8 block, be32 first word`, then for each following word
 *   `be32 bits` and one `be32 entry` per set bit, lowest first;
 * - RECV_BITMAP_END 0x4603: `be16 blocks`, then per block `be32 pages held,
 *   be32 sum, be32 weighted, be32 squared`.
 * @module
 */
import { popcount32 } from "../vm/ram.ts";
import type { DigestSums, MigrationDigests } from "./integrity.ts";

/** ferry's received-pages bitmap message ("F" 2). */
export const MIG_RP_MSG_FERRY_RECV_BITMAP = 0x4602;
/** ferry's end of the received-pages bitmap, with the destination's digest sums ("F" 3). */
export const MIG_RP_MSG_FERRY_RECV_BITMAP_END = 0x4603;
/** Largest payload of one return-path message (its length is a be16). */
const MAX_PAYLOAD = 0xffff;
/** Largest encoding of one bitmap word: its bits and 32 entries. */
const MAX_WORD = 4 + 32 * 4;

/** The received-pages bitmap did not arrive as the destination sent it, or does not fit this guest. */
export class ReceivedBitmapError extends Error {
  override readonly name = "ReceivedBitmapError";
  constructor(message: string, options?: ErrorOptions) {
    super(`Bad received-pages bitmap from the destination: ${message}`, options);
  }
}

/** The sums over `entries` as a DigestTable keeps them (engine/integrity.ts). */
export function entrySums(entries: Uint32Array): DigestSums {
  let sum = 0;
  let weighted = 0;
  let squared = 0;
  for (let i = 0; i < entries.length; i++) {
    const d = entries[i] | 0;
    if (d === 0) continue;
    const w = i + 1;
    sum = (sum + d) | 0;
    weighted = (weighted + Math.imul(w, d)) | 0;
    squared = (squared + Math.imul(Math.imul(w, w), d)) | 0;
  }
  return {
    units: entries.length,
    sum: sum >>> 0,
    weighted: weighted >>> 0,
    squared: squared >>> 0,
  };
}

/** Pages with a non-zero entry (held by the destination). */
function heldPages(entries: Uint32Array): number {
  let n = 0;
  for (let i = 0; i < entries.length; i++) if (entries[i] !== 0) n++;
  return n;
}

function message(type: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length);
  const v = new DataView(out.buffer);
  v.setUint16(0, type);
  v.setUint16(2, payload.length);
  out.set(payload, 4);
  return out;
}

/**
 * Destination side: the return-path messages carrying its received-pages bitmap
 * and the entries of the pages it holds, block by block, then the end message.
 */
export function encodeReceived(digests: MigrationDigests): Uint8Array[] {
  const out: Uint8Array[] = [];
  const scratch = new Uint8Array(MAX_PAYLOAD);
  const view = new DataView(scratch.buffer);
  digests.ram.forEach(({ table }, block) => {
    const entries = table.digests;
    const words = Math.ceil(entries.length / 32);
    let word = 0;
    while (word < words) {
      scratch[0] = block;
      view.setUint32(1, word);
      let pos = 5;
      while (word < words && pos + MAX_WORD <= MAX_PAYLOAD) {
        let bits = 0;
        const first = word * 32;
        const last = Math.min(first + 32, entries.length);
        for (let i = first; i < last; i++) if (entries[i] !== 0) bits |= 1 << (i - first);
        view.setUint32(pos, bits >>> 0);
        pos += 4;
        for (let i = first; i < last; i++) {
          if (entries[i] === 0) continue;
          view.setUint32(pos, entries[i]);
          pos += 4;
        }
        word++;
      }
      out.push(message(MIG_RP_MSG_FERRY_RECV_BITMAP, scratch.slice(0, pos)));
    }
  });
  const end = new Uint8Array(2 + digests.ram.length * 16);
  const ev = new DataView(end.buffer);
  ev.setUint16(0, digests.ram.length);
  digests.ram.forEach(({ table }, block) => {
    const s = table.sums;
    const at = 2 + block * 16;
    ev.setUint32(at, heldPages(table.digests));
    ev.setUint32(at + 4, s.sum);
    ev.setUint32(at + 8, s.weighted);
    ev.setUint32(at + 12, s.squared);
  });
  out.push(message(MIG_RP_MSG_FERRY_RECV_BITMAP_END, end));
  return out;
}

/** What the source learns from the destination's bitmap, per RAM block. */
export interface ReceivedBlock {
  /** The destination's entry per page (0: not held). */
  readonly entries: Uint32Array;
  /** Pages held, as the destination counted them. */
  readonly held: number;
}

/**
 * Source side: rebuilds the destination's entries from its RECV_BITMAP messages
 * (fed in order) and checks them against the sums of RECV_BITMAP_END.
 */
export class ReceivedBitmapReader {
  readonly #blocks: Uint32Array[];
  #result: ReceivedBlock[] | null = null;

  /** For a guest of blocks of `pages` pages each, in order. */
  constructor(pages: readonly number[]) {
    this.#blocks = pages.map((n) => new Uint32Array(n));
  }

  /** The blocks, once the end message checked out; else null. */
  get result(): ReceivedBlock[] | null {
    return this.#result;
  }

  /** Takes one message; returns true once it was the end message (the bitmap is complete). */
  feed(type: number, payload: Uint8Array): boolean {
    if (this.#result) throw new ReceivedBitmapError("a message after its end");
    const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    if (type === MIG_RP_MSG_FERRY_RECV_BITMAP) {
      if (payload.length < 5) throw new ReceivedBitmapError(`a message of ${payload.length} bytes`);
      const entries = this.#blocks[payload[0]];
      if (!entries) {
        throw new ReceivedBitmapError(`block ${payload[0]}, this guest has ${this.#blocks.length}`);
      }
      let word = v.getUint32(1);
      let pos = 5;
      while (pos < payload.length) {
        if (pos + 4 > payload.length) throw new ReceivedBitmapError("a truncated word");
        const bits = v.getUint32(pos);
        pos += 4;
        const first = word * 32;
        if (bits !== 0 && first + 32 - Math.clz32(bits) > entries.length) {
          throw new ReceivedBitmapError(
            `pages beyond block ${payload[0]} (${entries.length} pages)`,
          );
        }
        if (pos + popcount32(bits) * 4 > payload.length) {
          throw new ReceivedBitmapError("a truncated word");
        }
        for (let b = bits | 0; b !== 0; b &= b - 1) {
          const entry = v.getUint32(pos);
          pos += 4;
          if (entry === 0) throw new ReceivedBitmapError("a held page with entry 0");
          entries[first + 31 - Math.clz32(b & -b)] = entry;
        }
        word++;
      }
      return false;
    }
    if (type !== MIG_RP_MSG_FERRY_RECV_BITMAP_END) {
      throw new ReceivedBitmapError(`message type 0x${type.toString(16)} inside the bitmap`);
    }
    const n = payload.length >= 2 ? v.getUint16(0) : -1;
    if (n !== this.#blocks.length || payload.length !== 2 + n * 16) {
      throw new ReceivedBitmapError(
        `its end names ${n} blocks in ${payload.length} bytes, this guest has ${this.#blocks.length}`,
      );
    }
    this.#result = this.#blocks.map((entries, block) => {
      const at = 2 + block * 16;
      const held = v.getUint32(at);
      const mine = entrySums(entries);
      if (
        held !== heldPages(entries) || mine.sum !== v.getUint32(at + 4) ||
        mine.weighted !== v.getUint32(at + 8) || mine.squared !== v.getUint32(at + 12)
      ) {
        throw new ReceivedBitmapError(
          `block ${block}: the pages and digests read do not add up to the sums the destination sent`,
        );
      }
      return { entries, held };
    });
    return true;
  }
}

/**
 * Source side: per block, the pages to send again — those whose destination entry
 * differs from the source's own (never received, or a record lost in flight) — and
 * how many the destination holds as last sent. `foreign` counts pages the
 * destination holds that this source never sent: none, unless it is another
 * migration's destination.
 */
export function pagesToResend(
  mine: MigrationDigests,
  theirs: readonly ReceivedBlock[],
): { maps: Uint32Array[]; held: number; resend: number; foreign: number } {
  let held = 0;
  let resend = 0;
  let foreign = 0;
  const maps = mine.ram.map(({ table }, block) => {
    const a = table.digests;
    const b = theirs[block].entries;
    const map = new Uint32Array(Math.ceil(a.length / 32));
    for (let i = 0; i < a.length; i++) {
      if (a[i] === b[i]) {
        if (a[i] !== 0) held++;
        continue;
      }
      map[i >>> 5] |= 1 << (i & 31);
      resend++;
      if (a[i] === 0) foreign++;
    }
    return map;
  });
  return { maps, held, resend, foreign };
}
