/**
 * QEMU's `block` live section (block-migration.c), over ferry's raw disk in 1 MiB
 * chunks. Every record starts with `be64 (sector << 9) | flags` (sector = 512-byte
 * unit): DEVICE_BLOCK records name the device (`u8 len, name`) and carry 1 MiB of
 * data unless ZERO_BLOCK is set; PROGRESS carries a percentage in the sector field;
 * EOS ends every START/PART/END payload.
 */
import { type Disk, DISK_CHUNK } from "../../vm/disk.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";
import type { StreamWriter } from "../format/writer.ts";
import { kernelsFor } from "../format/buffers.ts";
import type { DigestTable, MigrationDigests } from "../integrity.ts";
import type { LiveSaver, Section, SectionLoader } from "./section.ts";

/** Flag bits in the low 9 bits of a block record's header. */
export const BlockFlag = {
  DEVICE_BLOCK: 0x01,
  EOS: 0x02,
  PROGRESS: 0x04,
  ZERO_BLOCK: 0x08,
} as const;

/** Mask of the flag bits (the sector field is shifted left by 9). */
export const BLOCK_FLAG_MASK = 0x1ff;
/** 512-byte sectors per chunk. */
export const SECTORS_PER_CHUNK = DISK_CHUNK / 512;
/** The `block` live section's id string. */
export const BLOCK_SECTION_NAME = "block";
/** Version of the `block` live section. */
export const BLOCK_SECTION_VERSION = 1;

const TWO32 = 0x100000000;
/** Most block bytes one loop turn sends before RAM gets its turn (both share the budget). */
const BLOCK_TURN_BYTES = 8 << 20;
/** The loader starts a background fsync after every this many chunks written. */
const FLUSH_EVERY_CHUNKS = 16;
/** At most this many chunks are written past a background fsync still in flight. */
const MAX_UNSYNCED_CHUNKS = 48;

/** Counters of the outgoing block section; they feed `disk` in the migration info. */
export interface BlockStats {
  /** Bytes the block section put on the wire. */
  transferred: number;
  /** Chunks sent with data. */
  chunks: number;
  /** Chunks sent as ZERO_BLOCK records. */
  zeroChunks: number;
}

/** Options of a BlockSaver. */
export interface BlockSaverOptions {
  /** inc: start from the chunks written since the base instead of the whole image. */
  readonly incremental: boolean;
  /** zero_blocks: send all-zero chunks as ZERO_BLOCK records. */
  readonly zeroBlocks: boolean;
  /** With `verify`: digests every chunk as it is sent. */
  readonly digests?: MigrationDigests;
}

/**
 * The outgoing half: a migration bitmap per chunk (all ones for blk, the
 * written-since-base bitmap for inc), iterate() sends dirty chunks under a budget,
 * complete() sends the rest once the guest is stopped.
 */
export class BlockSaver implements LiveSaver {
  readonly turnBytes = BLOCK_TURN_BYTES;
  readonly #disk: Disk;
  readonly #bitmap: Uint32Array;
  readonly #scratch: Uint8Array | null;
  readonly #scratchWords: Int32Array | null;
  #dirty = 0;
  #cursor = 0;
  /** Chunks to send in the first sweep (for PROGRESS). */
  #initial = 0;
  #sentInitial = 0;
  readonly #table: DigestTable | null;
  readonly stats: BlockStats = { transferred: 0, chunks: 0, zeroChunks: 0 };

  constructor(disk: Disk, options: BlockSaverOptions) {
    this.#disk = disk;
    this.#table = options.digests?.trackDisk(disk.name, disk.chunks) ?? null;
    this.#bitmap = new Uint32Array(disk.dirty.length);
    this.#scratch = options.zeroBlocks ? new Uint8Array(DISK_CHUNK) : null;
    this.#scratchWords = this.#scratch ? new Int32Array(this.#scratch.buffer) : null;
    // Clear the guest's log first: the bitmap below already covers every chunk it held.
    disk.syncDirty(new Uint32Array(disk.dirty.length));
    if (options.incremental) {
      for (let w = 0; w < this.#bitmap.length; w++) {
        this.#bitmap[w] = Atomics.load(disk.written, w);
      }
    } else {
      for (let c = 0; c < disk.chunks; c++) this.#bitmap[c >>> 5] |= 1 << (c & 31);
    }
    for (let c = 0; c < disk.chunks; c++) {
      if (this.#bitmap[c >>> 5] & (1 << (c & 31))) this.#dirty++;
    }
    this.#initial = this.#dirty;
  }

  /** Bytes of the image. */
  get totalBytes(): number {
    return this.#disk.size;
  }

  /** Bytes still to send (every dirty chunk in full). */
  get remainingBytes(): number {
    return this.#dirty * DISK_CHUNK;
  }

  /** Collects the guest's disk dirty log; returns the chunks newly marked. */
  sync(): number {
    const added = this.#disk.syncDirty(this.#bitmap);
    this.#dirty += added;
    return added;
  }

  /** Bytes pending after a sync (what the switchover decision counts). */
  pending(): number {
    this.sync();
    return this.remainingBytes;
  }

  /** Bytes left if the guest stopped now. */
  get backlogBytes(): number {
    return this.remainingBytes;
  }

  /** Writes the START payload: just EOS (as QEMU's block_save_setup). */
  async setup(w: StreamWriter): Promise<void> {
    const before = w.bytes;
    await w.room(8);
    w.be64(BlockFlag.EOS);
    this.stats.transferred += w.bytes - before;
  }

  /**
   * Sends dirty chunks until `stop()` says so, `turnBytes` went out, or none are
   * left; then PROGRESS and EOS.
   */
  async iterate(w: StreamWriter, stop: () => boolean): Promise<number> {
    const before = w.bytes;
    const turnEnd = before + this.turnBytes;
    this.sync();
    let sent = 0;
    while (this.#dirty > 0 && !stop() && w.bytes < turnEnd) {
      await this.#sendNext(w);
      sent++;
    }
    await this.#progress(w);
    await w.room(8);
    w.be64(BlockFlag.EOS);
    this.stats.transferred += w.bytes - before;
    return sent;
  }

  /** With the guest stopped: sends every dirty chunk, then EOS. */
  async complete(w: StreamWriter): Promise<void> {
    const before = w.bytes;
    this.sync();
    while (this.#dirty > 0) await this.#sendNext(w);
    await w.room(8);
    w.be64(BlockFlag.EOS);
    this.stats.transferred += w.bytes - before;
  }

  async #progress(w: StreamWriter): Promise<void> {
    const percent = this.#initial === 0
      ? 100
      : Math.floor((this.#sentInitial * 100) / this.#initial);
    await w.room(8);
    w.be64(Math.min(100, percent) * 512 + BlockFlag.PROGRESS);
  }

  /** Sends the next dirty chunk at or after the cursor (there is one). */
  async #sendNext(w: StreamWriter): Promise<void> {
    const chunks = this.#disk.chunks;
    let c = this.#cursor;
    for (;;) {
      if (c >= chunks) c = 0;
      const word = this.#bitmap[c >>> 5];
      if (word === 0) {
        c = (c | 31) + 1;
        continue;
      }
      if (word & (1 << (c & 31))) break;
      c++;
    }
    this.#bitmap[c >>> 5] &= ~(1 << (c & 31));
    this.#dirty--;
    this.#cursor = c + 1;
    if (this.#sentInitial < this.#initial) this.#sentInitial++;
    const name = this.#disk.name;
    const header = 8 + 1 + name.length;
    await w.room(header + DISK_CHUNK);
    const offset = c * DISK_CHUNK; // == (sector << 9)
    if (this.#scratch) {
      this.#disk.readChunk(c, this.#scratch);
      if (isZero(this.#scratchWords!)) {
        w.be64(offset + (BlockFlag.DEVICE_BLOCK | BlockFlag.ZERO_BLOCK));
        w.str8(name);
        this.stats.zeroChunks++;
        this.#table?.set(c, 0);
        return;
      }
      w.be64(offset + BlockFlag.DEVICE_BLOCK);
      w.str8(name);
      w.raw(this.#scratch);
    } else {
      w.be64(offset + BlockFlag.DEVICE_BLOCK);
      w.str8(name);
      this.#disk.readChunk(c, w.buf.subarray(w.pos, w.pos + DISK_CHUNK));
      w.pos += DISK_CHUNK;
    }
    this.#table?.set(c, kernelsFor(w.buf).digest(w.buf, w.pos - DISK_CHUNK, DISK_CHUNK));
    this.stats.chunks++;
  }
}

function isZero(words: Int32Array): boolean {
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** What the incoming half applied. */
export interface BlockLoadStats {
  chunks: number;
  zeroChunks: number;
  progress: number;
}

/**
 * The incoming half: validates every record (flags, device name, chunk alignment,
 * bounds) and writes chunks into the local image; nothing past the image is ever
 * written. The image is marked incomplete by start() and committed by finish().
 */
export class BlockLoader implements SectionLoader {
  readonly stats: BlockLoadStats = { chunks: 0, zeroChunks: 0, progress: 0 };
  #started = false;
  #zero: Uint8Array | null = null;
  #written = 0;
  /** #written when the last background fsync started. */
  #syncedAt = 0;
  readonly #digests: MigrationDigests | undefined;
  #table: DigestTable | null = null;

  /** A loader into `disk`; with `digests` (the `verify` capability) every chunk is digested. */
  constructor(readonly disk: Disk | undefined, digests?: MigrationDigests) {
    this.#digests = digests;
  }

  /** True once a `block` section started. */
  get started(): boolean {
    return this.#started;
  }

  /** A `block` section START arrived: refuse without a disk, else mark the image incomplete. */
  start(at: number): void {
    if (!this.disk) {
      throw new StreamError(at, `stream carries a "block" section but this guest has no disk`);
    }
    this.disk.markIncomplete();
    this.#started = true;
    this.#table = this.#digests?.trackDisk(this.disk.name, this.disk.chunks) ?? null;
  }

  /** Reads records up to and including EOS; a START first marks the disk incomplete. */
  async load(
    r: StreamReader,
    phase: "start" | "part" | "end" | "full" = "part",
    at = 0,
  ): Promise<void> {
    if (phase === "start") this.start(at);
    const disk = this.disk!;
    for (;;) {
      await r.need(8);
      const at = r.offset;
      const [hi, lo] = r.be64Parts();
      const flags = lo & BLOCK_FLAG_MASK;
      if (hi >= 0x200000) throw new StreamError(at, `block record offset beyond 2^53`);
      const offset = hi * TWO32 + (lo - flags);
      const sector = offset / 512;
      if (flags === BlockFlag.EOS) {
        if (offset !== 0) throw new StreamError(at, `block EOS record with sector ${sector}`);
        return;
      }
      if (flags === BlockFlag.PROGRESS) {
        if (sector > 100) throw new StreamError(at, `block progress ${sector}% is above 100`);
        this.stats.progress = sector;
        continue;
      }
      if (
        flags !== BlockFlag.DEVICE_BLOCK &&
        flags !== (BlockFlag.DEVICE_BLOCK | BlockFlag.ZERO_BLOCK)
      ) {
        throw new StreamError(at, `unknown block record flags 0x${flags.toString(16)}`);
      }
      const name = await r.str8();
      if (name !== disk.name) {
        throw new StreamError(
          at,
          `block record for device "${name}", this guest has "${disk.name}"`,
        );
      }
      if (sector % SECTORS_PER_CHUNK !== 0) {
        throw new StreamError(
          at,
          `block record at sector ${sector} is not aligned to a ${SECTORS_PER_CHUNK}-sector chunk`,
        );
      }
      if (offset + DISK_CHUNK > disk.size) {
        throw new StreamError(
          at,
          `block record at sector ${sector} lies beyond the ${disk.size}-byte image`,
        );
      }
      const chunk = offset / DISK_CHUNK;
      if (flags & BlockFlag.ZERO_BLOCK) {
        // A chunk known to be a hole of a freshly created image is left alone.
        this.#zero ??= new Uint8Array(DISK_CHUNK);
        if (!disk.knownZero(chunk)) {
          disk.writeChunk(chunk, this.#zero);
          this.#written++;
        }
        this.#table?.set(chunk, 0);
        this.stats.zeroChunks++;
      } else {
        await r.need(DISK_CHUNK);
        this.#table?.set(chunk, kernelsFor(r.buf).digest(r.buf, r.pos, DISK_CHUNK));
        disk.writeChunk(chunk, r.take(DISK_CHUNK));
        this.#written++;
        this.stats.chunks++;
      }
      // Write back as we go, so the fsync before `completed` (inside the guest's
      // downtime) has little left: a background fsync every FLUSH_EVERY_CHUNKS
      // chunks, and no more than MAX_UNSYNCED_CHUNKS written past one in flight.
      if (this.#written - this.#syncedAt >= FLUSH_EVERY_CHUNKS) {
        if (this.#written - this.#syncedAt >= MAX_UNSYNCED_CHUNKS) await disk.flushed();
        if (!disk.flushing) {
          disk.flushSoon();
          this.#syncedAt = this.#written;
        }
      }
    }
  }

  /** At EOF: a stream need not carry a disk. */
  finish(): void {}

  /** The stream is complete and checked: fsync the image and remove its incomplete marker. */
  async commit(): Promise<void> {
    if (this.#started) await this.disk!.commit();
  }
}

/**
 * The `block` live section: carried only with `blk` or `inc` (a disk to copy);
 * a destination takes it only when its guest has a disk.
 */
export const blockSection: Section = {
  name: BLOCK_SECTION_NAME,
  version: BLOCK_SECTION_VERSION,
  kind: "live",
  saver: (ctx) =>
    ctx.block && ctx.guest.disk
      ? new BlockSaver(ctx.guest.disk, {
        incremental: ctx.block.incremental,
        zeroBlocks: ctx.capabilities.zero_blocks,
        ...(ctx.digests ? { digests: ctx.digests } : {}),
      })
      : null,
  loader: (ctx) => new BlockLoader(ctx.guest.disk, ctx.digests),
};
