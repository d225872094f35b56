import { isZeroPage, PAGE_SHIFT, PAGE_SIZE, popcount32, type RamBlock } from "../../vm/ram.ts";
import { fullBitmap } from "../../vm/ram.ts";
import { RAM_FLAG_MASK, RamFlag } from "../format/constants.ts";
import type { StreamWriter } from "../format/writer.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";
import { ENCODING_FLAG_XBZRLE, XbzrleError } from "../format/xbzrle.ts";
import { PageCache } from "../page_cache.ts";
import { type KernelKind, type Kernels, sharedKernels } from "../wasm/kernels.ts";
import { kernelsFor } from "../format/buffers.ts";
import type { DigestTable, MigrationDigests } from "../integrity.ts";

/** Largest RAM record: header, block name, XBZRLE flag and length, page. */
const MAX_RECORD = 8 + 1 + 255 + 3 + PAGE_SIZE;
/** Wire bytes of a plain page record after the first of its block. */
const PLAIN_RECORD = 8 + PAGE_SIZE;
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
  /** XBZRLE counters; null when XBZRLE is off. */
  xbzrle: XbzrleStats | null;
}

/** XBZRLE counters (QEMU's xbzrle-cache info). */
export interface XbzrleStats {
  /** Bytes of XBZRLE records sent. */
  bytes: number;
  /** Pages sent as XBZRLE records. */
  pages: number;
  /** Dirty pages not found in the cache (sent plainly, then cached). */
  cacheMiss: number;
  /** Cache lookups made (hits + misses). */
  lookups: number;
  /** Pages whose encoding would have been larger than the page (sent plainly). */
  overflow: number;
  /** Dirty pages identical to their cached copy (nothing sent). */
  unchanged: number;
}

/** Options of a RamSaver. */
export interface RamSaverOptions {
  /** Turns XBZRLE on with a page cache of this many bytes. */
  readonly xbzrleCacheSize?: number;
  /** XBZRLE kernels (wasm or TS); default: selectedKernelKind(). */
  readonly kernels?: KernelKind;
  /** With `verify`: digests every page as it is sent (one table per block, in order). */
  readonly digests?: MigrationDigests;
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
  /** XBZRLE state: the page cache (and its snapshot page), each block's first global page. */
  #cache: PageCache | null = null;
  readonly #blockBase: number[] = [];
  /** True during the first sweep (QEMU's ram_bulk_stage): no XBZRLE yet. */
  #bulk = true;
  /** Estimated wire bytes per dirty page, from what recent pages cost. */
  #wirePerPage = PLAIN_RECORD;
  #passPages = 0;
  #passBytes = 0;
  /** ms spent sending pages of the current pass after the bulk stage (sleeps and API turns excluded). */
  #passBusyMs = 0;
  /** Busy ms per page of the last whole pass (0 until one finished). */
  #busyMsPerPage = 0;
  /** Pages the last sync marked dirty (auto-converge reads it). */
  lastSyncAdded = 0;
  /** Per-block digest tables with `verify`, else null. */
  readonly #tables: (DigestTable | null)[];
  readonly stats: RamStats = {
    duplicate: 0,
    normal: 0,
    transferred: 0,
    dirtySyncCount: 0,
    dirtyPagesRate: 0,
    xbzrle: null,
  };

  constructor(blocks: readonly RamBlock[], now: () => number, options: RamSaverOptions = {}) {
    if (options.xbzrleCacheSize !== undefined) {
      this.#cache = new PageCache(options.xbzrleCacheSize, options.kernels);
      this.stats.xbzrle = {
        bytes: 0,
        pages: 0,
        cacheMiss: 0,
        lookups: 0,
        overflow: 0,
        unchanged: 0,
      };
      let base = 0;
      for (const b of blocks) {
        this.#blockBase.push(base);
        base += b.pages;
      }
    }
    this.#blocks = blocks;
    this.#now = now;
    this.#tables = blocks.map((_, i) => options.digests?.ram[i].table ?? null);
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

  /**
   * Bytes that would still have to go if the guest stopped now: pages dirty in the
   * migration bitmap or in the guest's log since the last sync (what stall
   * detection watches: unlike `remainingBytes`, it does not drop to nothing at the
   * end of every pass).
   */
  get backlogBytes(): number {
    let pages = 0;
    for (let i = 0; i < this.#blocks.length; i++) {
      const map = this.#bitmaps[i];
      const log = this.#blocks[i].dirty;
      for (let w = 0; w < map.length; w++) {
        const bits = map[w] | log[w];
        if (bits !== 0) pages += popcount32(bits);
      }
    }
    return pages * PAGE_SIZE;
  }

  /** Bytes still to send if every dirty page went in full (QEMU's "remaining"). */
  get remainingBytes(): number {
    return this.#dirty * PAGE_SIZE;
  }

  /**
   * Bytes the dirty pages are expected to cost on the wire. Without XBZRLE that is
   * the full page (as QEMU); with it, what the pages sent since the bulk stage cost
   * on average — so the switchover decision compares wire bytes with the wire
   * bandwidth, which is what lets an XBZRLE migration converge.
   */
  get pendingWireBytes(): number {
    return this.#cache ? Math.ceil(this.#dirty * this.#wirePerPage) : this.remainingBytes;
  }

  /**
   * With XBZRLE: how long (ms) sending the dirty pages is expected to take at the
   * busy rate of the last pass; 0 without XBZRLE. Delta-encoding costs CPU that
   * the few bytes it puts on the wire do not show, so the wire estimate alone
   * would switch over with an encode pass longer than the downtime limit ahead.
   */
  get pendingBusyMs(): number {
    return this.#cache ? this.#dirty * this.#busyMsPerPage : 0;
  }

  /** Effective XBZRLE cache size in bytes (0 when XBZRLE is off). */
  get cacheSize(): number {
    return this.#cache?.sizeBytes ?? 0;
  }

  /** Resizes the XBZRLE cache (QEMU's migrate_set_cache_size), keeping what fits. */
  resizeCache(bytes: number): void {
    if (this.#cache && bytes !== this.#cache.sizeBytes) this.#cache = this.#cache.resized(bytes);
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
    this.lastSyncAdded = added;
    this.stats.dirtySyncCount++;
    if (this.#passPages > 0) {
      this.#wirePerPage = Math.max(1, this.#passBytes / this.#passPages);
      this.#busyMsPerPage = this.#passBusyMs / this.#passPages;
      this.#passPages = 0;
      this.#passBytes = 0;
    }
    this.#passBusyMs = 0;
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
    // "Nothing left" is only believed after a fresh sync: without this, a pass that
    // ends inside the first window (max_size still 0, e.g. a mostly-zero guest)
    // would switch over with everything dirtied meanwhile still unsent.
    if (this.pendingWireBytes < maxSize || this.#dirty === 0) this.sync();
    return this.pendingWireBytes;
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
      const t0 = this.#now();
      const sent = await this.#sendSome(w, 64);
      if (!this.#bulk) this.#passBusyMs += this.#now() - t0;
      pages += sent;
      if (sent < 64) {
        passDone = true;
        break;
      }
      if (this.#now() - started > MAX_ITERATE_MS) break;
      // Socket writes that complete at once never return to the event loop; the
      // writer gives the API a turn every few ms of real time.
      await w.breathe();
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
        if (this.#block === 0) this.#bulk = false;
        continue;
      }
      let bits = map[this.#word];
      if (bits === 0) {
        this.#word++;
        continue;
      }
      const block = this.#blocks[this.#block];
      const table = this.#tables[this.#block];
      while (bits !== 0 && sent < max) {
        if (w.free < MAX_RECORD) await w.flush();
        const before = bits;
        bits = this.#cache
          ? this.#sendBitsXbzrle(w, block, table, this.#word, bits, max - sent)
          : this.#sendBits(w, block, table, this.#word, bits, max - sent);
        sent += popcount32((before ^ bits) >>> 0);
      }
      map[this.#word] = bits;
      if (bits === 0) this.#word++;
    }
    if (this.#dirty === 0 && this.#block === 0 && this.#word === 0) this.#bulk = false;
    return sent;
  }

  /**
   * #sendBits with XBZRLE: after the bulk stage, a dirty page found in the cache
   * goes as an XBZRLE record encoded against the cached copy (or not at all when
   * unchanged); a miss or an overflow goes plainly. Every page sent non-zero is
   * cached as the exact bytes sent, and a zero page's cached copy is zeroed, so
   * the cache always equals what the destination holds.
   */
  #sendBitsXbzrle(
    w: StreamWriter,
    block: RamBlock,
    table: DigestTable | null,
    word: number,
    bits: number,
    max: number,
  ): number {
    const cache = this.#cache!;
    const xb = this.stats.xbzrle!;
    // The snapshot and the cached pages share the kernels' memory: encoding copies nothing in.
    const snap = cache.scratch;
    const kernels = cache.kernels;
    const buf = w.buf;
    const limit = buf.length - MAX_RECORD;
    const age = this.stats.dirtySyncCount;
    const keyBase = this.#blockBase[this.#blocks.indexOf(block)];
    let handled = 0;
    const start = w.bytes;
    bits |= 0;
    while (bits !== 0 && handled < max && w.pos <= limit) {
      const low = bits & -bits;
      bits ^= low;
      handled++;
      const page = (word << 5) + (31 - Math.clz32(low));
      const offset = page * PAGE_SIZE;
      const key = keyBase + page;
      const zero = (block.touched[word] & low) === 0 ||
        isZeroPage(block.words, page << (PAGE_SHIFT - 2));
      if (zero) {
        this.#header(w, block, offset, RamFlag.ZERO);
        w.u8(0);
        this.stats.duplicate++;
        cache.lookup(key)?.fill(0);
        table?.set(page, 0);
        continue;
      }
      if (!this.#bulk) {
        xb.lookups++;
        const old = cache.lookup(key);
        if (old) {
          snap.set(block.bytes.subarray(offset, offset + PAGE_SIZE));
          const headerAt = w.pos;
          const lastBefore = this.#last;
          this.#header(w, block, offset, RamFlag.XBZRLE);
          const lenAt = w.pos + 1;
          const n = kernels.xbzrleEncode(old, snap, buf.subarray(lenAt + 2, lenAt + 2 + PAGE_SIZE));
          if (n === 0) {
            w.pos = headerAt; // identical: nothing goes out
            this.#last = lastBefore;
            xb.unchanged++;
            continue;
          }
          if (n > 0) {
            buf[w.pos] = ENCODING_FLAG_XBZRLE;
            buf[lenAt] = n >>> 8;
            buf[lenAt + 1] = n;
            w.pos = lenAt + 2 + n;
            xb.pages++;
            xb.bytes += w.pos - headerAt;
            old.set(snap);
            table?.set(page, kernels.digest(snap, 0, PAGE_SIZE));
            continue;
          }
          // Overflow: send the snapshot plainly instead.
          w.pos = headerAt;
          this.#last = lastBefore;
          xb.overflow++;
          this.#header(w, block, offset, RamFlag.PAGE);
          buf.set(snap, w.pos);
          w.pos += PAGE_SIZE;
          this.stats.normal++;
          old.set(snap);
          table?.set(page, kernels.digest(snap, 0, PAGE_SIZE));
          continue;
        }
        xb.cacheMiss++;
      }
      this.#header(w, block, offset, RamFlag.PAGE);
      const at = w.pos;
      buf.set(block.bytes.subarray(offset, offset + PAGE_SIZE), at);
      w.pos += PAGE_SIZE;
      this.stats.normal++;
      cache.insert(key, buf.subarray(at, at + PAGE_SIZE), age);
      table?.set(page, kernelsFor(buf).digest(buf, at, PAGE_SIZE));
    }
    this.#dirty -= handled;
    if (!this.#bulk) {
      this.#passPages += handled;
      this.#passBytes += w.bytes - start;
    }
    return bits >>> 0;
  }

  /** Writes a record header (and the block name unless CONTINUE applies). */
  #header(w: StreamWriter, block: RamBlock, offset: number, flag: number): void {
    const cont = this.#last === block;
    w.be64(offset + flag + (cont ? RamFlag.CONTINUE : 0));
    if (!cont) {
      w.str8(block.name);
      this.#last = block;
    }
  }

  /**
   * Writes the pages whose bits are set in `bits` (bitmap word `word` of `block`),
   * lowest first, while the writer's buffer has room for a record and fewer than
   * `max` were written. Returns the bits still to send. One tight loop per word:
   * untouched pages (known zero) cost a 9-byte record and no scan.
   */
  #sendBits(
    w: StreamWriter,
    block: RamBlock,
    table: DigestTable | null,
    word: number,
    bits: number,
    max: number,
  ): number {
    const buf = w.buf;
    const kernels = kernelsFor(buf);
    // Straight from guest RAM into the buffer, digested on the way (one pass), when
    // both live in WebAssembly memories; else a copy, then a digest with `verify`.
    const mover = kernels.owns(buf) ? kernels.moverFor(block.memory) : null;
    const at0 = buf.byteOffset;
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
    if (bits === -1 && touched === 0 && cont && max >= 32) {
      // A whole word of never-written pages: 32 ZERO records differing only in the
      // offset's bytes 5 and 6 (base is a multiple of 32 pages). MAX_RECORD > 288.
      const hi = base >>> 20;
      const b4 = (base >>> 12) & 0xff;
      const b5 = (base >>> 4) & 0xff;
      for (let i = 0; i < 32; i++, pos += 9) {
        buf[pos] = hi >>> 24;
        buf[pos + 1] = hi >>> 16;
        buf[pos + 2] = hi >>> 8;
        buf[pos + 3] = hi;
        buf[pos + 4] = b4;
        buf[pos + 5] = b5 + (i >>> 4);
        buf[pos + 6] = (i & 15) << 4;
        buf[pos + 7] = RamFlag.ZERO | RamFlag.CONTINUE;
        buf[pos + 8] = 0;
      }
      w.pos = pos;
      if (table !== null) { for (let i = 0; i < 32; i++) table.set(base + i, 0); }
      this.#dirty -= 32;
      this.stats.duplicate += 32;
      return 0;
    }
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
        table?.set(page, 0);
      } else {
        if (mover !== null) {
          const digest = mover.copyDigest(offset, at0 + pos, PAGE_SIZE);
          if (table !== null) table.set(page, digest);
        } else {
          buf.set(bytes.subarray(offset, offset + PAGE_SIZE), pos);
          if (table !== null) table.set(page, kernels.digest(buf, pos, PAGE_SIZE));
        }
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
  /** XBZRLE records applied. */
  xbzrlePages: number;
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
  /** The digest table of #last's block, with `verify`. */
  #lastTable: DigestTable | null = null;
  readonly #tables: ReadonlyMap<RamBlock, DigestTable>;
  #sizesSeen = false;
  readonly #kernels: Kernels;
  readonly stats: RamLoadStats = { zeroPages: 0, normalPages: 0, xbzrlePages: 0 };

  /**
   * A loader into `blocks`; XBZRLE records are decoded by `kernels` (default: the
   * shared set). With `digests` (the `verify` capability) every page written is
   * digested into its block's table.
   */
  constructor(
    blocks: readonly RamBlock[],
    kernels: Kernels = sharedKernels(),
    digests?: MigrationDigests,
    /** Most page records the stream may carry (a stream that never ends is cut). */
    readonly maxRecords = Infinity,
  ) {
    this.#kernels = kernels;
    this.#all = blocks;
    this.#blocks = new Map(blocks.map((b) => [b.name, b]));
    this.#tables = new Map(digests ? blocks.map((b, i) => [b, digests.ram[i].table]) : []);
  }

  /** Page records applied so far. */
  get records(): number {
    return this.stats.zeroPages + this.stats.normalPages + this.stats.xbzrlePages;
  }

  get #pages(): number {
    return this.#all.reduce((n, b) => n + b.pages, 0);
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
      if (this.records > this.maxRecords) {
        throw new StreamError(
          at,
          `the stream carried ${this.records} page records for ${this.#pages} guest pages ` +
            `without completing (at most ${this.maxRecords}, incoming_page_budget)`,
        );
      }
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
      if (kind !== RamFlag.ZERO && kind !== RamFlag.PAGE && kind !== RamFlag.XBZRLE) {
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
        this.#lastTable = this.#tables.get(block) ?? null;
      }
      const table = this.#lastTable;
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
        table?.set(page, 0);
        this.stats.zeroPages++;
      } else if (kind === RamFlag.XBZRLE) {
        await this.#loadXbzrle(r, block, addr, at);
        table?.set(page, this.#kernels.digest(block.bytes, addr, PAGE_SIZE));
      } else {
        if (r.avail < PAGE_SIZE) await r.need(PAGE_SIZE);
        const kernels = kernelsFor(r.buf);
        const mover = kernels.owns(r.buf) ? kernels.moverFor(block.memory) : null;
        if (mover !== null) {
          const digest = mover.digestCopy(r.buf.byteOffset + r.pos, addr, PAGE_SIZE);
          r.pos += PAGE_SIZE;
          table?.set(page, digest);
        } else {
          table?.set(page, kernels.digest(r.buf, r.pos, PAGE_SIZE));
          block.bytes.set(r.take(PAGE_SIZE), addr);
        }
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
    const table = this.#lastTable;
    const buf = r.buf;
    const kernels = kernelsFor(buf);
    const mover = kernels.owns(buf) ? kernels.moverFor(block.memory) : null;
    const at0 = buf.byteOffset;
    const end = r.end;
    const bytes = block.bytes;
    const touched = block.touched;
    const length = block.length;
    let pos = r.pos;
    let zeros = 0;
    let normals = 0;
    // The general loop reports an exhausted budget.
    const budget = this.maxRecords - this.records;
    while (end - pos >= 9 && zeros + normals <= budget) {
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
        table?.set(page, 0);
        pos += 9;
        zeros++;
      } else if (flags === (RamFlag.PAGE | RamFlag.CONTINUE)) {
        if (end - pos < 8 + PAGE_SIZE) break;
        if (mover !== null) {
          const digest = mover.digestCopy(at0 + pos + 8, addr, PAGE_SIZE);
          if (table !== null) table.set(page, digest);
        } else {
          if (table !== null) table.set(page, kernels.digest(buf, pos + 8, PAGE_SIZE));
          bytes.set(buf.subarray(pos + 8, pos + 8 + PAGE_SIZE), addr);
        }
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

  /** Applies one XBZRLE record onto the page in place (QEMU's load_xbzrle). */
  async #loadXbzrle(r: StreamReader, block: RamBlock, addr: number, at: number): Promise<void> {
    if (r.avail < 3) await r.need(3);
    const flag = r.u8();
    if (flag !== ENCODING_FLAG_XBZRLE) {
      throw new StreamError(
        at,
        `XBZRLE record with encoding flag 0x${flag.toString(16)} (expected 0x01)`,
      );
    }
    const len = r.be16();
    if (len === 0 || len > PAGE_SIZE) {
      throw new StreamError(at, `XBZRLE record of ${len} bytes (must be 1 to ${PAGE_SIZE})`);
    }
    if (r.avail < len) await r.need(len);
    try {
      this.#kernels.xbzrleDecode(r.take(len), block.bytes.subarray(addr, addr + PAGE_SIZE));
    } catch (e) {
      if (e instanceof XbzrleError) throw new StreamError(at, e.message, { cause: e });
      throw e;
    }
    block.markTouched(addr / PAGE_SIZE);
    this.stats.xbzrlePages++;
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
