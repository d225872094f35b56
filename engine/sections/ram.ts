import { isZeroPage, PAGE_SHIFT, PAGE_SIZE, popcount32, type RamBlock } from "../../vm/ram.ts";
import { fullBitmap } from "../../vm/ram.ts";
import { RAM_FLAG_MASK, RamFlag } from "../format/constants.ts";
import type { StreamWriter } from "../format/writer.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";

/** Largest RAM record: header, block name, page. */
const MAX_RECORD = 8 + 1 + 255 + PAGE_SIZE;
/** QEMU's MAX_WAIT: one iteration never runs longer than this many ms. */
export const MAX_ITERATE_MS = 50;
const TWO32 = 0x100000000;

/** Counters the RAM section keeps; they feed `ram` in the migration info. */
export interface RamStats {
  /** Zero pages sent as ZERO records (QEMU's "duplicate"). */
  duplicate: number;
  /** Pages sent in full. */
  normal: number;
  /** Bytes the RAM section put on the wire. */
  transferred: number;
  /** Dirty-log syncs done. */
  dirtySyncCount: number;
  /** Guest pages dirtied per second over the last ≥1 s of syncs. */
  dirtyPagesRate: number;
}

/** What one iterate() call did. */
export interface IterateResult {
  /** Pages sent. */
  readonly pages: number;
  /** True when a full sweep found no more dirty pages. */
  readonly passDone: boolean;
}

/**
 * The outgoing half of QEMU's `ram` live section: a migration bitmap per block,
 * all ones at the start; iterate() sends dirty pages under a budget; complete()
 * sends everything left once the guest is stopped.
 */
export class RamSaver {
  readonly #blocks: readonly RamBlock[];
  readonly #bitmaps: Uint32Array[];
  readonly #now: () => number;
  /** Bitmap words in all blocks (one sweep). */
  readonly #totalWords: number;
  #dirty: number;
  #block = 0;
  #word = 0;
  #last: RamBlock | null = null;
  #periodStart: number;
  #periodDirty = 0;
  readonly stats: RamStats = {
    duplicate: 0,
    normal: 0,
    transferred: 0,
    dirtySyncCount: 0,
    dirtyPagesRate: 0,
  };

  constructor(blocks: readonly RamBlock[], now: () => number) {
    this.#blocks = blocks;
    this.#now = now;
    this.#bitmaps = blocks.map((b) => fullBitmap(b.pages));
    this.#dirty = blocks.reduce((n, b) => n + b.pages, 0);
    this.#totalWords = this.#bitmaps.reduce((n, m) => n + m.length, 0);
    this.#periodStart = now();
  }

  /** Dirty pages still to send. */
  get dirtyPages(): number {
    return this.#dirty;
  }

  /** Bytes of RAM in all blocks. */
  get totalBytes(): number {
    return this.#blocks.reduce((n, b) => n + b.length, 0);
  }

  /** Bytes still to send if every dirty page went in full (QEMU's "remaining"). */
  get remainingBytes(): number {
    return this.#dirty * PAGE_SIZE;
  }

  /**
   * Pulls the guest's dirty logs into the migration bitmap (KVM's dirty log sync)
   * and updates the dirty-page rate. Returns the pages newly marked dirty.
   */
  sync(): number {
    let added = 0;
    for (let i = 0; i < this.#blocks.length; i++) {
      added += this.#blocks[i].syncDirty(this.#bitmaps[i]);
    }
    this.#dirty += added;
    this.#periodDirty += added;
    this.stats.dirtySyncCount++;
    const now = this.#now();
    if (now - this.#periodStart >= 1000) {
      this.stats.dirtyPagesRate = Math.round(
        (this.#periodDirty * 1000) / (now - this.#periodStart),
      );
      this.#periodStart = now;
      this.#periodDirty = 0;
    }
    return added;
  }

  /**
   * QEMU's ram_save_pending: bytes still to send; when that is below `maxSize`
   * the dirty log is synced first so the switchover decision sees fresh numbers.
   */
  pending(maxSize: number): number {
    if (this.remainingBytes < maxSize) this.sync();
    return this.remainingBytes;
  }

  /** Writes the START payload: total size, every block's name and length, EOS. */
  async setup(w: StreamWriter): Promise<void> {
    const start = w.bytes;
    await w.room(8);
    w.be64(this.totalBytes + RamFlag.MEM_SIZE);
    for (const b of this.#blocks) {
      await w.room(1 + 255 + 8);
      w.str8(b.name);
      w.be64(b.length);
    }
    await w.room(8);
    w.be64(RamFlag.EOS);
    this.#last = null;
    this.stats.transferred += w.bytes - start;
  }

  /**
   * Sends dirty pages until `stop()` says the window's budget is spent, MAX_ITERATE_MS
   * pass, or a full sweep finds nothing more; then writes EOS. (QEMU's ram_save_iterate.)
   */
  async iterate(w: StreamWriter, stop: () => boolean): Promise<IterateResult> {
    const started = this.#now();
    const before = w.bytes;
    let pages = 0;
    let passDone = false;
    this.#last = null;
    while (!stop()) {
      const sent = await this.#sendSome(w, 64);
      pages += sent;
      if (sent < 64) {
        passDone = true;
        break;
      }
      if (this.#now() - started > MAX_ITERATE_MS) break;
    }
    await w.room(8);
    w.be64(RamFlag.EOS);
    this.stats.transferred += w.bytes - before;
    return { pages, passDone };
  }

  /** Syncs once more and sends every dirty page, without limits; then EOS. The guest is stopped. */
  async complete(w: StreamWriter): Promise<number> {
    const before = w.bytes;
    this.sync();
    this.#last = null;
    let pages = 0;
    for (;;) {
      const sent = await this.#sendSome(w, 4096);
      pages += sent;
      if (sent < 4096) break;
    }
    await w.room(8);
    w.be64(RamFlag.EOS);
    this.stats.transferred += w.bytes - before;
    return pages;
  }

  /**
   * Sends up to `max` dirty pages, continuing from the cursor and wrapping around
   * once; returns how many it sent (fewer than `max` means no dirty page is left).
   */
  async #sendSome(w: StreamWriter, max: number): Promise<number> {
    let sent = 0;
    if (this.#dirty === 0) return 0;
    const nblocks = this.#blocks.length;
    // At most one full sweep over all blocks plus the starting word again; every
    // step to the next block also takes one turn, so a sweep costs words + blocks.
    let wordsLeft = this.#totalWords + nblocks + 1;
    while (sent < max && this.#dirty > 0 && wordsLeft-- > 0) {
      const map = this.#bitmaps[this.#block];
      if (this.#word >= map.length) {
        this.#word = 0;
        this.#block = (this.#block + 1) % nblocks;
        continue;
      }
      let bits = map[this.#word];
      if (bits === 0) {
        this.#word++;
        continue;
      }
      const block = this.#blocks[this.#block];
      while (bits !== 0 && sent < max) {
        if (w.free < MAX_RECORD) await w.flush();
        const before = bits;
        bits = this.#sendBits(w, block, this.#word, bits, max - sent);
        sent += popcount32((before ^ bits) >>> 0);
      }
      map[this.#word] = bits;
      if (bits === 0) this.#word++;
    }
    return sent;
  }

  /**
   * Writes the pages whose bits are set in `bits` (bitmap word `word` of `block`),
   * lowest first, while the writer's buffer has room for a record and fewer than
   * `max` were written. Returns the bits still to send. One tight loop per word:
   * untouched pages (known zero) cost a 9-byte record and no scan.
   */
  #sendBits(w: StreamWriter, block: RamBlock, word: number, bits: number, max: number): number {
    const buf = w.buf;
    const limit = buf.length - MAX_RECORD;
    let pos = w.pos;
    if (pos > limit) return bits;
    const touched = block.touched[word];
    const words = block.words;
    const bytes = block.bytes;
    const base = word << 5;
    let zeros = 0;
    let normals = 0;
    let cont = this.#last === block;
    bits |= 0;
    while (bits !== 0 && zeros + normals < max && pos <= limit) {
      const low = bits & -bits;
      bits ^= low;
      const page = base + (31 - Math.clz32(low));
      const offset = page * PAGE_SIZE;
      const zero = (touched & low) === 0 || isZeroPage(words, page << (PAGE_SHIFT - 2));
      const hi = offset >= TWO32 ? Math.floor(offset / TWO32) : 0;
      const lo = (offset | (zero ? RamFlag.ZERO : RamFlag.PAGE) | (cont ? RamFlag.CONTINUE : 0)) >>>
        0;
      buf[pos] = hi >>> 24;
      buf[pos + 1] = hi >>> 16;
      buf[pos + 2] = hi >>> 8;
      buf[pos + 3] = hi;
      buf[pos + 4] = lo >>> 24;
      buf[pos + 5] = lo >>> 16;
      buf[pos + 6] = lo >>> 8;
      buf[pos + 7] = lo;
      pos += 8;
      if (!cont) {
        w.pos = pos;
        w.str8(block.name);
        pos = w.pos;
        this.#last = block;
        cont = true;
      }
      if (zero) {
        buf[pos++] = 0;
        zeros++;
      } else {
        buf.set(bytes.subarray(offset, offset + PAGE_SIZE), pos);
        pos += PAGE_SIZE;
        normals++;
      }
    }
    w.pos = pos;
    this.#dirty -= zeros + normals;
    this.stats.duplicate += zeros;
    this.stats.normal += normals;
    return bits >>> 0;
  }
}

/** What a RAM loader has written so far. */
export interface RamLoadStats {
  /** ZERO records applied. */
  zeroPages: number;
  /** PAGE records applied. */
  normalPages: number;
}

/**
 * The incoming half of the `ram` section (QEMU's ram_load, version 4). Every field
 * is checked before memory is touched: block names and lengths must match the
 * local guest, every page must lie inside its block, ZERO must fill with 0.
 */
export class RamLoader {
  readonly #blocks: ReadonlyMap<string, RamBlock>;
  readonly #all: readonly RamBlock[];
  #last: RamBlock | null = null;
  #sizesSeen = false;
  readonly stats: RamLoadStats = { zeroPages: 0, normalPages: 0 };

  constructor(blocks: readonly RamBlock[]) {
    this.#all = blocks;
    this.#blocks = new Map(blocks.map((b) => [b.name, b]));
  }

  /** True once a START payload listed the blocks. */
  get sizesSeen(): boolean {
    return this.#sizesSeen;
  }

  /** Reads records up to and including EOS. `start` is true for the START payload. */
  async load(r: StreamReader, start: boolean): Promise<void> {
    this.#last = null;
    for (;;) {
      if (this.#last !== null) this.#loadBuffered(r);
      if (r.avail < 8) await r.need(8);
      const at = r.offset;
      const [hi, lo] = r.be64Parts();
      const flags = lo & RAM_FLAG_MASK;
      const addr = hi * TWO32 + ((lo & ~RAM_FLAG_MASK) >>> 0);
      if (flags & RamFlag.MEM_SIZE) {
        if (!start || this.#sizesSeen) {
          throw new StreamError(at, "RAM block list (MEM_SIZE) outside the section's START");
        }
        if (flags !== RamFlag.MEM_SIZE) {
          throw new StreamError(at, `RAM MEM_SIZE record with extra flags 0x${flags.toString(16)}`);
        }
        await this.#loadSizes(r, addr, at);
        continue;
      }
      if (flags === RamFlag.EOS) return;
      const kind = flags & ~RamFlag.CONTINUE;
      if (kind !== RamFlag.ZERO && kind !== RamFlag.PAGE) {
        if (kind === RamFlag.XBZRLE) {
          throw new StreamError(at, "XBZRLE page received, but this ferry does not decode XBZRLE");
        }
        throw new StreamError(at, `unknown RAM record flags 0x${flags.toString(16)}`);
      }
      if (!this.#sizesSeen) throw new StreamError(at, "RAM page before the RAM block list");
      let block: RamBlock;
      if (flags & RamFlag.CONTINUE) {
        if (!this.#last) {
          throw new StreamError(at, "RAM record says CONTINUE but no block was named before it");
        }
        block = this.#last;
      } else {
        if (r.avail < 1) await r.need(1);
        const len = r.u8();
        if (r.avail < len) await r.need(len);
        const name = decoder.decode(r.take(len));
        const found = this.#blocks.get(name);
        if (!found) throw new StreamError(at, `RAM page for unknown block "${name}"`);
        block = found;
        this.#last = block;
      }
      if (addr + PAGE_SIZE > block.length) {
        throw new StreamError(
          at,
          `Cannot load RAM page: offset 0x${
            addr.toString(16)
          } beyond block "${block.name}" (length 0x${block.length.toString(16)})`,
        );
      }
      const page = addr / PAGE_SIZE;
      if (kind === RamFlag.ZERO) {
        if (r.avail < 1) await r.need(1);
        const fill = r.u8();
        if (fill !== 0) {
          throw new StreamError(
            at,
            `ZERO page record with fill byte 0x${fill.toString(16)} (must be 0)`,
          );
        }
        if (block.isTouched(page)) block.bytes.fill(0, addr, addr + PAGE_SIZE);
        this.stats.zeroPages++;
      } else {
        if (r.avail < PAGE_SIZE) await r.need(PAGE_SIZE);
        block.bytes.set(r.take(PAGE_SIZE), addr);
        block.markTouched(page);
        this.stats.normalPages++;
      }
    }
  }

  /**
   * The fast path: applies every complete CONTINUE record (ZERO or PAGE, same block
   * as the last one) already in the reader's buffer, in one synchronous loop. It
   * stops, without consuming it, at anything else (another block, EOS, a partial
   * record, any invalid field), which the general loop then handles and reports.
   */
  #loadBuffered(r: StreamReader): void {
    const block = this.#last!;
    const buf = r.buf;
    const end = r.end;
    const bytes = block.bytes;
    const touched = block.touched;
    const length = block.length;
    let pos = r.pos;
    let zeros = 0;
    let normals = 0;
    while (end - pos >= 9) {
      const hi = (buf[pos] << 24 | buf[pos + 1] << 16 | buf[pos + 2] << 8 | buf[pos + 3]) >>> 0;
      const lo = buf[pos + 4] << 24 | buf[pos + 5] << 16 | buf[pos + 6] << 8 | buf[pos + 7];
      const flags = lo & RAM_FLAG_MASK;
      const addr = hi * TWO32 + ((lo ^ flags) >>> 0);
      if (addr + PAGE_SIZE > length) break;
      const page = addr / PAGE_SIZE;
      const bit = 1 << (page & 31);
      if (flags === (RamFlag.ZERO | RamFlag.CONTINUE)) {
        if (buf[pos + 8] !== 0) break;
        if ((touched[page >>> 5] & bit) !== 0) bytes.fill(0, addr, addr + PAGE_SIZE);
        pos += 9;
        zeros++;
      } else if (flags === (RamFlag.PAGE | RamFlag.CONTINUE)) {
        if (end - pos < 8 + PAGE_SIZE) break;
        bytes.set(buf.subarray(pos + 8, pos + 8 + PAGE_SIZE), addr);
        touched[page >>> 5] |= bit;
        pos += 8 + PAGE_SIZE;
        normals++;
      } else {
        break;
      }
    }
    r.pos = pos;
    this.stats.zeroPages += zeros;
    this.stats.normalPages += normals;
  }

  async #loadSizes(r: StreamReader, total: number, at: number): Promise<void> {
    const local = this.#all.reduce((n, b) => n + b.length, 0);
    if (total !== local) {
      throw new StreamError(
        at,
        `RAM size mismatch: stream has 0x${total.toString(16)} bytes, this guest 0x${
          local.toString(16)
        }`,
      );
    }
    let left = total;
    const seen = new Set<string>();
    while (left > 0) {
      const nameAt = r.offset;
      const name = await r.str8();
      await r.need(8);
      const [hi, lo] = r.be64Parts();
      const length = hi * TWO32 + lo;
      const block = this.#blocks.get(name);
      if (!block) throw new StreamError(nameAt, `unknown RAM block "${name}"`);
      if (seen.has(name)) throw new StreamError(nameAt, `RAM block "${name}" listed twice`);
      seen.add(name);
      if (length !== block.length) {
        throw new StreamError(
          nameAt,
          `length mismatch for RAM block "${name}": stream 0x${length.toString(16)}, local 0x${
            block.length.toString(16)
          }`,
        );
      }
      left -= length;
    }
    this.#sizesSeen = true;
  }
}

/** Number of dirty bits set in a bitmap (for tests and diagnostics). */
export function countBits(map: Uint32Array): number {
  let n = 0;
  for (let i = 0; i < map.length; i++) n += popcount32(map[i]);
  return n;
}

const decoder = new TextDecoder();
