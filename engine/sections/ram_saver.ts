/**
 * The outgoing half of QEMU's `ram` live section (ram_save_setup, ram_save_pending,
 * ram_save_iterate, ram_save_complete): docs/ARCHITECTURE.md, "Sections".
 * @module
 */
import { fullBitmap, isSamePage, isZeroPage, popcount32, type RamBlock } from "../../vm/ram.ts";
import { PAGE_SHIFT, PAGE_SIZE, RamFlag } from "../format/constants.ts";
import type { StreamWriter } from "../format/writer.ts";
import { ENCODING_FLAG_XBZRLE } from "../format/xbzrle.ts";
import { PageCache } from "./page_cache.ts";
import type { KernelKind } from "../wasm/kernels.ts";
import { kernelsFor } from "../format/buffers.ts";
import type { DigestTable, MigrationDigests } from "../integrity.ts";
import type { LiveSaver } from "./section.ts";
import {
  COMPRESSED_FIELDS,
  GROUP_PAGES,
  MAX_RECORD,
  nameBytes,
  PLAIN_RECORD,
  putCompressedFields,
  putHeader,
  putName,
  putRefField,
  putZeroWord,
  runCheck,
} from "./ram_records.ts";
import { type Codec, CODEC_ID, compress } from "../format/compression.ts";
import { CompressionGate, type GateState } from "../compress_gate.ts";
import { PageRefs } from "./page_refs.ts";
import type { MultifdSink } from "../multifd/sender.ts";

/**
 * Room the packed path needs for one bitmap word: 32 records with their name, or
 * a compressed run staged STAGE_GAP bytes after the records before it.
 */
const PACKED_ROOM = GROUP_PAGES * MAX_RECORD + 1024;
/**
 * Where a word's data pages are staged, past the word's ZERO and reference
 * records: far enough that the PAGE records they may become (8 bytes more each,
 * and the block name) never overtake a page not yet moved.
 */
const STAGE_GAP = GROUP_PAGES * 8 + 256 + 256;

/** QEMU's MAX_WAIT: one iteration never runs longer than this many ms. */
export const MAX_ITERATE_MS = 50;

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
  /** Compression counters; null when `compress_method` is none. */
  compression: CompressionStats | null;
  /** Pages sent as same-page references; null when `page_refs` is off. */
  refPages: number | null;
}

/** What compression did (the migration info's `compression`). */
export interface CompressionStats {
  readonly method: Codec;
  /** Pages sent in compressed runs. */
  pages: number;
  /** Bytes of those pages. */
  rawBytes: number;
  /** Wire bytes of the compressed run records. */
  bytes: number;
  /** Runs sent plainly because they did not shrink. */
  incompressible: number;
  /** The per-window switch and what it measured. */
  gate: GateState;
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
  /**
   * A page that went out with data and is zero when sent again goes as a full page
   * of zeroes, not a ZERO record. Readers that start from zeroed memory and skip
   * ZERO records (QEMU's analyze-migration.py) then see it zeroed; on for streams
   * that go to files or commands, which such readers read.
   */
  readonly zeroedAsPages?: boolean;
  /**
   * Compresses runs of pages (`compress_method`, `compress_level`); never with
   * XBZRLE. `gate` decides window by window (default: a new CompressionGate).
   */
  readonly compress?: {
    readonly codec: Codec;
    readonly level: number;
    readonly gate?: CompressionGate;
  };
  /** Sends a page equal to one the destination holds as a reference to it (`page_refs`). */
  readonly pageRefs?: boolean;
  /**
   * Sends pages over multifd channels instead of the stream (docs/ARCHITECTURE.md,
   * "Multifd"); the stream keeps a FLUSH record after each sync point. Not with
   * XBZRLE, page references or zeroedAsPages.
   */
  readonly multifd?: MultifdSink;
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
export class RamSaver implements LiveSaver {
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
  /**
   * How long the last sync took (engine clock, ms). The final sync runs with the
   * guest stopped, so it is part of the downtime: for the x86 guest, whose sync
   * compares all of RAM, a large part (docs/ARCHITECTURE.md, "The x86 guest").
   */
  lastSyncMs = 0;
  /** Per-block digest tables with `verify`, else null. */
  readonly #tables: (DigestTable | null)[];
  /** With zeroedAsPages: per block, the pages that went out with data (one bit each). */
  readonly #sentData: Uint32Array[] | null;
  readonly stats: RamStats = {
    duplicate: 0,
    normal: 0,
    transferred: 0,
    dirtySyncCount: 0,
    dirtyPagesRate: 0,
    xbzrle: null,
    compression: null,
    refPages: null,
  };
  /** With compression: the codec, its level and the per-window switch. */
  readonly #compress: { readonly codec: Codec; readonly level: number } | null;
  readonly #gate: CompressionGate | null;
  /** With page_refs: one index per block. */
  readonly #refs: PageRefs[] | null;
  /** The packed path (compression or references) instead of #sendBits. */
  readonly #packed: boolean;
  /** A word's data pages and their digests (packed path). */
  readonly #dataPages = new Int32Array(GROUP_PAGES);
  readonly #dataDigests = new Uint32Array(GROUP_PAGES);
  /** With multifd: the channels, the packet being gathered, and whether a sync point is due. */
  readonly #multifd: MultifdSink | null;
  readonly #packet: Int32Array;
  /** Pages gathered in #packet, of block #packetBlock; queued when full, at a block's end, or at EOS. */
  #packetLength = 0;
  #packetBlock = 0;
  #syncPointDue = false;

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
    if (options.xbzrleCacheSize !== undefined && (options.compress || options.pageRefs)) {
      throw new RangeError("compression and same-page references do not combine with XBZRLE");
    }
    this.#compress = options.compress ?? null;
    this.#gate = options.compress ? options.compress.gate ?? new CompressionGate() : null;
    if (options.compress) {
      this.stats.compression = {
        method: options.compress.codec,
        pages: 0,
        rawBytes: 0,
        bytes: 0,
        incompressible: 0,
        gate: this.#gate!.state,
      };
    }
    this.#refs = options.pageRefs ? blocks.map((b) => new PageRefs(b.pages)) : null;
    if (options.pageRefs) this.stats.refPages = 0;
    this.#multifd = options.multifd ?? null;
    if (this.#multifd && (this.#cache || this.#refs || options.zeroedAsPages)) {
      throw new RangeError(
        "multifd does not combine with XBZRLE, same-page references or snapshot streams",
      );
    }
    this.#packet = new Int32Array(this.#multifd?.packetPages ?? 0);
    this.#packed = this.#compress !== null || this.#refs !== null;
    this.#blocks = blocks;
    this.#now = now;
    this.#tables = blocks.map((_, i) => options.digests?.ram[i].table ?? null);
    this.#sentData = options.zeroedAsPages
      ? blocks.map((b) => new Uint32Array(Math.ceil(b.pages / 32)))
      : null;
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
   * Bytes the dirty pages are expected to cost on the wire. Plain, that is the full
   * page (as QEMU); with XBZRLE, what the pages sent since the bulk stage cost on
   * average; while compression is on, the pages over the last measured ratio. So the
   * switchover decision compares wire bytes with the wire bandwidth, which is what
   * lets an XBZRLE or compressing migration converge.
   */
  get pendingWireBytes(): number {
    if (this.#cache) return Math.ceil(this.#dirty * this.#wirePerPage);
    const gate = this.#compressing();
    return gate ? Math.ceil(this.remainingBytes / gate.ratio) : this.remainingBytes;
  }

  /**
   * How long (ms) the CPU is expected to take to send the dirty pages: with XBZRLE
   * at the busy rate of the last pass, while compression is on at the compressor's
   * measured intake; 0 otherwise. Encoding costs CPU that the few bytes it puts on
   * the wire do not show, so the wire estimate alone would switch over with an
   * encode pass longer than the downtime limit ahead.
   */
  get pendingBusyMs(): number {
    if (this.#cache) return this.#dirty * this.#busyMsPerPage;
    const gate = this.#compressing();
    return gate ? this.remainingBytes / gate.compressorRate : 0;
  }

  /** The gate's state while compression is on and measured (docs/ARCHITECTURE.md, "Compression"). */
  #compressing(): GateState | null {
    const state = this.#gate?.state;
    if (!state?.active) return null;
    const measured = state.ratio > 1 && Number.isFinite(state.ratio) &&
      state.compressorRate > 0 && Number.isFinite(state.compressorRate);
    return measured ? state : null;
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
    const started = this.#now();
    for (let i = 0; i < this.#blocks.length; i++) {
      added += this.#blocks[i].syncDirty(this.#bitmaps[i]);
      // A reference to a page dirtied since goes again (page_refs.ts says why).
      if (this.#refs) added += this.#refs[i].redirtyReferrers(this.#bitmaps[i]);
    }
    this.lastSyncMs = this.#now() - started;
    // Pages sent from now on may be later versions of pages still in flight.
    if (this.#multifd) this.#syncPointDue = true;
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
   * After an interrupted pre-copy resumed on a new stream (engine/resume.ts): the
   * pages of `maps` (one bitmap per block) go again, and the next record names its
   * block. The XBZRLE cache starts afresh, since the destination may not hold what
   * it describes. Returns the pages newly marked.
   */
  resend(maps: readonly Uint32Array[]): number {
    let added = 0;
    for (let i = 0; i < this.#bitmaps.length; i++) {
      const map = this.#bitmaps[i];
      const more = maps[i];
      for (let w = 0; w < map.length; w++) {
        const fresh = more[w] & ~map[w];
        if (fresh === 0) continue;
        map[w] |= fresh;
        added += popcount32(fresh);
      }
    }
    this.#dirty += added;
    this.#last = null;
    if (this.#cache) this.#cache = new PageCache(this.#cache.sizeBytes);
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
    const start = w.bytes - w.sideBytes;
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
    this.stats.transferred += w.bytes - w.sideBytes - start;
  }

  /**
   * Sends dirty pages until `stop()` says the window's budget is spent, MAX_ITERATE_MS
   * pass, or a full sweep finds nothing more; then writes EOS. (QEMU's ram_save_iterate.)
   */
  async iterate(w: StreamWriter, stop: () => boolean): Promise<IterateResult> {
    const started = this.#now();
    const before = w.bytes - w.sideBytes;
    let pages = 0;
    let passDone = false;
    this.#last = null;
    await this.#syncPoint(w);
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
    if (this.#multifd) await this.#queuePacket();
    await w.room(8);
    w.be64(RamFlag.EOS);
    this.stats.transferred += w.bytes - w.sideBytes - before;
    return { pages, passDone };
  }

  /** Syncs once more and sends every dirty page, without limits; then EOS. The guest is stopped. */
  async complete(w: StreamWriter): Promise<number> {
    const before = w.bytes - w.sideBytes;
    this.sync();
    this.#last = null;
    await this.#syncPoint(w);
    let pages = 0;
    for (;;) {
      const sent = await this.#sendSome(w, 4096);
      pages += sent;
      if (sent < 4096) break;
    }
    // Every page is applied on the destination before the stream goes on.
    if (this.#multifd) this.#syncPointDue = true;
    await this.#syncPoint(w);
    await w.room(8);
    w.be64(RamFlag.EOS);
    this.stats.transferred += w.bytes - w.sideBytes - before;
    return pages;
  }

  /**
   * Sends up to `max` dirty pages, continuing from the cursor and wrapping around
   * once; returns how many it sent (fewer than `max` means no dirty page is left).
   */
  async #sendSome(w: StreamWriter, max: number): Promise<number> {
    if (this.#multifd) return await this.#queueSome(w, max);
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
      while (bits !== 0 && sent < max) {
        if (w.free < (this.#packed ? PACKED_ROOM : MAX_RECORD)) await w.flush();
        const before = bits;
        bits = this.#cache
          ? this.#sendBitsXbzrle(w, bits, max - sent)
          : this.#packed
          ? this.#sendBitsPacked(w, bits, max - sent)
          : this.#sendBits(w, bits, max - sent);
        sent += popcount32((before ^ bits) >>> 0);
      }
      map[this.#word] = bits;
      if (bits === 0) this.#word++;
    }
    if (this.#dirty === 0 && this.#block === 0 && this.#word === 0) this.#bulk = false;
    return sent;
  }

  /**
   * With multifd, QEMU's multifd_send_sync_main: when a dirty-log sync happened
   * since the last sync point, waits until every packet queued before it is on
   * the wire, sends a SYNC packet on every channel and writes the FLUSH record
   * (docs/ARCHITECTURE.md, "Multifd").
   */
  async #syncPoint(w: StreamWriter): Promise<void> {
    if (!this.#multifd || !this.#syncPointDue) return;
    this.#syncPointDue = false;
    await this.#queuePacket();
    await this.#multifd.barrier();
    await w.room(8);
    w.be64(RamFlag.MULTIFD_FLUSH);
    // The channels stop at the sync point until the destination reads this record.
    await w.flush();
  }

  /** Queues the pages gathered so far, if any, as one packet. */
  async #queuePacket(): Promise<void> {
    const n = this.#packetLength;
    if (n === 0) return;
    this.#packetLength = 0;
    await this.#multifd!.queue(this.#packetBlock, this.#packet.subarray(0, n));
  }

  /**
   * #sendSome with multifd: gathers up to `max` dirty pages into packets of one
   * block each and queues them on the channels, whose workers read the pages
   * (zero pages are found there too); words of never-written pages go as ZERO
   * records on `w`. Returns how many pages it sent or queued.
   */
  async #queueSome(w: StreamWriter, max: number): Promise<number> {
    let sent = 0;
    if (this.#dirty === 0) return 0;
    const nblocks = this.#blocks.length;
    const packet = this.#packet;
    let wordsLeft = this.#totalWords + nblocks + 1;
    while (sent < max && this.#dirty > 0 && wordsLeft-- > 0) {
      const map = this.#bitmaps[this.#block];
      if (this.#word >= map.length) {
        await this.#queuePacket();
        this.#word = 0;
        this.#block = (this.#block + 1) % nblocks;
        if (this.#block === 0) this.#bulk = false;
        continue;
      }
      let bits = map[this.#word] | 0;
      if (bits === 0) {
        this.#word++;
        continue;
      }
      if (this.#blocks[this.#block].touched[this.#word] === 0) {
        // Pages never written go as ZERO records on the main stream, as QEMU 7.2 sends
        // zero pages there: the sync points order them with the channels' pages.
        if (w.free < MAX_RECORD) await w.flush();
        const before = bits;
        bits = this.#sendBits(w, bits, max - sent);
        sent += popcount32((before ^ bits) >>> 0);
        map[this.#word] = bits >>> 0;
        if (bits === 0) this.#word++;
        else wordsLeft++;
        continue;
      }
      const base = this.#word << 5;
      let n = this.#packetLength;
      this.#packetBlock = this.#block;
      while (bits !== 0 && sent < max && n < packet.length) {
        const low = bits & -bits;
        bits ^= low;
        packet[n++] = base + (31 - Math.clz32(low));
        sent++;
        this.#dirty--;
      }
      this.#packetLength = n;
      map[this.#word] = bits >>> 0;
      if (bits === 0) this.#word++;
      else wordsLeft++; // the same word again: a full packet split it
      if (n === packet.length) await this.#queuePacket();
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
  #sendBitsXbzrle(w: StreamWriter, bits: number, max: number): number {
    const block = this.#blocks[this.#block];
    const table = this.#tables[this.#block];
    const word = this.#word;
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
      const sentData = this.#sentData?.[this.#block];
      const zero = ((block.touched[word] & low) === 0 ||
        isZeroPage(block.words, page << (PAGE_SHIFT - 2))) &&
        (sentData === undefined || (sentData[word] & low) === 0);
      if (!zero && sentData !== undefined) sentData[word] |= low;
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

  /**
   * A rate-limit window ended having carried `bandwidth` bytes per ms; the limit
   * allows `limit` bytes per ms. With compression, decides whether the next window
   * compresses (compress_gate.ts).
   */
  windowEnded(bandwidth: number, limit: number): void {
    if (!this.#gate) return;
    this.#gate.endWindow(bandwidth, limit);
    this.stats.compression!.gate = this.#gate.state;
  }

  /**
   * #sendBits with compression or same-page references (docs/ARCHITECTURE.md,
   * "Compression" and "Same-page references"). The word's zero pages go as ZERO
   * records and pages equal to a page the destination holds as references, at
   * once; its other pages go last, as one compressed run when compression is on
   * for this window and the run shrinks, else as PAGE records. A page becomes a
   * reference target only once its own record is written.
   */
  #sendBitsPacked(w: StreamWriter, bits: number, max: number): number {
    const index = this.#block;
    const block = this.#blocks[index];
    const table = this.#tables[index];
    const refs = this.#refs?.[index] ?? null;
    const word = this.#word;
    const base = word << 5;
    const buf = w.buf;
    const kernels = kernelsFor(buf);
    const mover = kernels.owns(buf) ? kernels.moverFor(block.memory) : null;
    const sentData = this.#sentData?.[index];
    const touched = block.touched[word];
    const words = block.words;
    const dataPages = this.#dataPages;
    let data = 0;
    let handled = 0;
    bits |= 0;
    if (bits === -1 && touched === 0 && this.#last === block && max >= 32) {
      // A whole word of never-written pages: 32 ZERO records, as #sendBits sends them.
      w.pos = putZeroWord(w.buf, w.pos, base);
      if (table !== null) { for (let i = 0; i < 32; i++) table.set(base + i, 0); }
      refs?.sentOtherWord(word);
      this.#dirty -= 32;
      this.stats.duplicate += 32;
      return 0;
    }
    // A word with data may go as a compressed run (every word while the gate is on, a
    // sample of them while it is off); else its pages go as PAGE records at once.
    const run = touched !== 0 && (this.#gate?.compressNext() ?? false);
    while (bits !== 0 && handled < max) {
      const low = bits & -bits;
      bits ^= low;
      handled++;
      const page = base + (31 - Math.clz32(low));
      const offset = page * PAGE_SIZE;
      const zero = goesAsZero(touched, low, words, page, sentData, word);
      if (zero) {
        this.#header(w, block, offset, RamFlag.ZERO);
        w.u8(0);
        this.stats.duplicate++;
        table?.set(page, 0);
        refs?.sentOther(page);
        continue;
      }
      if (run) {
        // Into the run, unless the destination already holds these bytes.
        if (refs === null || !this.#sendRef(w, block, refs, page, -1)) dataPages[data++] = page;
        continue;
      }
      // A PAGE record, copied and digested in one pass; the digest then finds out
      // whether a reference does instead (the common miss costs no second read).
      const recordAt = w.pos;
      const last = this.#last;
      this.#header(w, block, offset, RamFlag.PAGE);
      let digest: number;
      if (mover !== null) digest = mover.copyDigest(offset, buf.byteOffset + w.pos, PAGE_SIZE);
      else {
        buf.set(block.bytes.subarray(offset, offset + PAGE_SIZE), w.pos);
        digest = kernels.digest(buf, w.pos, PAGE_SIZE);
      }
      if (refs !== null) {
        w.pos = recordAt;
        this.#last = last;
        if (this.#sendRef(w, block, refs, page, digest)) continue;
        this.#header(w, block, offset, RamFlag.PAGE);
        refs.sentData(page, digest);
      }
      w.pos += PAGE_SIZE;
      this.stats.normal++;
      table?.set(page, digest);
    }
    if (data > 0) {
      this.#writeRun(w, block, base, data);
      const digests = this.#dataDigests;
      for (let i = 0; i < data; i++) {
        table?.set(dataPages[i], digests[i]);
        refs?.sentData(dataPages[i], digests[i]);
      }
    }
    this.#dirty -= handled;
    return bits >>> 0;
  }

  /**
   * Sends `page` as a reference when a page the destination holds with the same
   * bytes is known (page_refs.ts says which may be named); returns whether it did.
   * `digest` is the page's, or -1 to compute it.
   */
  #sendRef(
    w: StreamWriter,
    block: RamBlock,
    refs: PageRefs,
    page: number,
    digest: number,
  ): boolean {
    const offset = page * PAGE_SIZE;
    const d = digest >= 0 ? digest : kernelsFor(w.buf).digest(block.bytes, offset, PAGE_SIZE);
    const target = refs.candidate(d);
    if (target < 0 || target === page) return false;
    const bit = 1 << (target & 31);
    const at = target >>> 5;
    if (((this.#bitmaps[this.#block][at] | block.dirty[at]) & bit) !== 0) return false;
    if (!isSamePage(block.words, target << (PAGE_SHIFT - 2), page << (PAGE_SHIFT - 2))) {
      return false;
    }
    this.#header(w, block, offset, RamFlag.REF);
    w.pos = putRefField(w.buf, w.pos, target * PAGE_SIZE);
    refs.sentOther(page);
    refs.referenced(page, target);
    this.#tables[this.#block]?.set(page, d);
    this.stats.refPages!++;
    return true;
  }

  /**
   * Writes the first `n` of #dataPages (pages of the group at page `base`) as one
   * compressed run, or as PAGE records when it does not shrink; their digests go
   * into #dataDigests. The pages are staged in the writer's buffer, past where
   * the records will go, and compressed from there.
   */
  #writeRun(w: StreamWriter, block: RamBlock, base: number, n: number): void {
    const buf = w.buf;
    const kernels = kernelsFor(buf);
    const mover = kernels.owns(buf) ? kernels.moverFor(block.memory) : null;
    const digests = this.#dataDigests;
    const stage = w.pos + STAGE_GAP;
    let mask = 0;
    for (let i = 0; i < n; i++) {
      const page = this.#dataPages[i];
      const offset = page * PAGE_SIZE;
      const at = stage + i * PAGE_SIZE;
      mask |= 1 << (page - base);
      if (mover !== null) digests[i] = mover.copyDigest(offset, buf.byteOffset + at, PAGE_SIZE);
      else {
        buf.set(block.bytes.subarray(offset, offset + PAGE_SIZE), at);
        digests[i] = kernels.digest(buf, at, PAGE_SIZE);
      }
    }
    const raw = n * PAGE_SIZE;
    const { codec, level } = this.#compress!;
    const t0 = this.#now();
    const out = compress(codec, buf.subarray(stage, stage + raw), level);
    this.#gate!.measured(raw, out.length, this.#now() - t0);
    const stats = this.stats.compression!;
    if (out.length <= raw - COMPRESSED_FIELDS) {
      const headerAt = w.pos;
      this.#header(w, block, base * PAGE_SIZE, RamFlag.COMPRESSED);
      const check = runCheck(digests, n);
      w.pos = putCompressedFields(buf, w.pos, CODEC_ID[codec], mask >>> 0, check, out.length);
      buf.set(out, w.pos);
      w.pos += out.length;
      stats.pages += n;
      stats.rawBytes += raw;
      stats.bytes += w.pos - headerAt;
      return;
    }
    // It did not shrink: the staged pages become PAGE records (each lands at or
    // before where it is staged, so moving them in order never overwrites one).
    stats.incompressible++;
    for (let i = 0; i < n; i++) {
      this.#header(w, block, this.#dataPages[i] * PAGE_SIZE, RamFlag.PAGE);
      const at = stage + i * PAGE_SIZE;
      if (w.pos !== at) buf.copyWithin(w.pos, at, at + PAGE_SIZE);
      w.pos += PAGE_SIZE;
    }
    this.stats.normal += n;
  }

  /** Writes a record header (and the block name unless CONTINUE applies). */
  #header(w: StreamWriter, block: RamBlock, offset: number, flag: number): void {
    const cont = this.#last === block;
    w.pos = putHeader(w.buf, w.pos, offset, flag | (cont ? RamFlag.CONTINUE : 0));
    if (!cont) {
      w.pos = putName(w.buf, w.pos, nameBytes(block.name));
      this.#last = block;
    }
  }

  /**
   * Writes the pages whose bits are set in `bits` (the cursor's bitmap word),
   * lowest first, while the writer's buffer has room for a record and fewer than
   * `max` were written. Returns the bits still to send. One tight loop per word:
   * untouched pages (known zero) cost a 9-byte record and no scan.
   */
  #sendBits(w: StreamWriter, bits: number, max: number): number {
    const block = this.#blocks[this.#block];
    const table = this.#tables[this.#block];
    const word = this.#word;
    const buf = w.buf;
    const kernels = kernelsFor(buf);
    // Straight from guest RAM into the buffer, digested on the way (one pass), when
    // both live in WebAssembly memories; else a copy, then a digest with `verify`.
    const mover = kernels.owns(buf) ? kernels.moverFor(block.memory) : null;
    const at0 = buf.byteOffset;
    const limit = buf.length - MAX_RECORD;
    let pos = w.pos;
    if (pos > limit) return bits;
    // A page that went out with data is never a ZERO record again (zeroedAsPages).
    const sentData = this.#sentData?.[this.#block];
    const touched = block.touched[word];
    const words = block.words;
    const bytes = block.bytes;
    const base = word << 5;
    let zeros = 0;
    let normals = 0;
    let cont = this.#last === block;
    bits |= 0;
    if (bits === -1 && touched === 0 && cont && max >= 32) {
      // A whole word of never-written pages: 32 ZERO records (MAX_RECORD > 288).
      w.pos = putZeroWord(buf, pos, base);
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
      const zero = goesAsZero(touched, low, words, page, sentData, word);
      pos = putHeader(
        buf,
        pos,
        offset,
        (zero ? RamFlag.ZERO : RamFlag.PAGE) | (cont ? RamFlag.CONTINUE : 0),
      );
      if (!cont) {
        pos = putName(buf, pos, nameBytes(block.name));
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

/**
 * True when the page `page` (bit `low` of bitmap word `word`) goes as a ZERO
 * record: it was never written (its touched bit is clear) or holds only zeroes,
 * unless it went out with data before and `sentData` (zeroedAsPages) is kept, in
 * which case it goes as a full page; a page with data is recorded there.
 */
function goesAsZero(
  touched: number,
  low: number,
  words: Int32Array,
  page: number,
  sentData: Uint32Array | undefined,
  word: number,
): boolean {
  const zero = (touched & low) === 0 || isZeroPage(words, page << (PAGE_SHIFT - 2));
  if (sentData === undefined) return zero;
  if (zero) return (sentData[word] & low) === 0;
  sentData[word] |= low;
  return false;
}
