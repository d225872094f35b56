/**
 * The incoming half of QEMU's `ram` live section (ram_load, version 4):
 * docs/ARCHITECTURE.md, "Sections".
 * @module
 */
import { popcount32, type RamBlock } from "../../vm/ram.ts";
import { PAGE_SIZE, RAM_FLAG_MASK, RamFlag } from "../format/constants.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";
import { ENCODING_FLAG_XBZRLE, XbzrleError } from "../format/xbzrle.ts";
import { type Kernels, sharedKernels } from "../wasm/kernels.ts";
import { kernelsFor } from "../format/buffers.ts";
import type { DigestTable, MigrationDigests } from "../integrity.ts";
import { COMPRESSED_FIELDS, GROUP_PAGES, runCheck, TWO32 } from "./ram_records.ts";
import {
  type Codec,
  codecById,
  type CompressMethod,
  DecompressError,
  decompressExact,
} from "../format/compression.ts";
import type { SectionLoader } from "./section.ts";
import type { MultifdLoad } from "../multifd/receiver.ts";

/** What a RAM loader has written so far. */
export interface RamLoadStats {
  /** ZERO records applied. */
  zeroPages: number;
  /** PAGE records applied. */
  normalPages: number;
  /** XBZRLE records applied. */
  xbzrlePages: number;
  /** Pages of compressed runs applied. */
  compressedPages: number;
  /** Same-page references applied. */
  refPages: number;
}

/** What a RAM loader accepts beyond QEMU's records; both ends must agree on them. */
export interface RamLoadOptions {
  /** The `compress_method` of this destination: compressed runs must use it. Default none. */
  readonly compression?: CompressMethod;
  /** The `page_refs` capability of this destination: same-page references are refused without it. */
  readonly pageRefs?: boolean;
  /** This destination's multifd channels: a FLUSH record waits for them (docs/ARCHITECTURE.md, "Multifd"). */
  readonly multifd?: MultifdLoad;
  /**
   * A CONTINUE record may name the block of the last record of an earlier section,
   * as QEMU's loader allows (its sender remembers the block across sections); by
   * default each section names its block first.
   */
  readonly continueAcrossSections?: boolean;
}

/**
 * The incoming half of the `ram` section (QEMU's ram_load, version 4). Every field
 * is checked before memory is touched: block names and lengths must match the
 * local guest, every page must lie inside its block, ZERO must fill with 0.
 */
export class RamLoader implements SectionLoader {
  readonly #blocks: ReadonlyMap<string, RamBlock>;
  readonly #all: readonly RamBlock[];
  #last: RamBlock | null = null;
  /** The digest table of #last's block, with `verify`. */
  #lastTable: DigestTable | null = null;
  readonly #tables: ReadonlyMap<RamBlock, DigestTable>;
  #sizesSeen = false;
  readonly #kernels: Kernels;
  readonly stats: RamLoadStats = {
    zeroPages: 0,
    normalPages: 0,
    xbzrlePages: 0,
    compressedPages: 0,
    refPages: 0,
  };
  readonly #compression: CompressMethod;
  readonly #multifd: MultifdLoad | null;
  readonly #continueAcross: boolean;
  /**
   * With page_refs: per block, one bit per page that holds data this stream
   * wrote (PAGE, XBZRLE, compressed run, reference): what a reference may copy.
   */
  readonly #received: ReadonlyMap<RamBlock, Uint32Array> | null;
  /** A compressed run's page digests. */
  readonly #runDigests = new Uint32Array(GROUP_PAGES);

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
    options: RamLoadOptions = {},
  ) {
    this.#compression = options.compression ?? "none";
    this.#multifd = options.multifd ?? null;
    this.#continueAcross = options.continueAcrossSections ?? false;
    this.#received = options.pageRefs
      ? new Map(blocks.map((b) => [b, new Uint32Array(Math.ceil(b.pages / 32))]))
      : null;
    this.#kernels = kernels;
    this.#all = blocks;
    this.#blocks = new Map(blocks.map((b) => [b.name, b]));
    this.#tables = new Map(digests ? blocks.map((b, i) => [b, digests.ram[i].table]) : []);
  }

  /** Page records applied so far. */
  get records(): number {
    const s = this.stats;
    return s.zeroPages + s.normalPages + s.xbzrlePages + s.compressedPages + s.refPages;
  }

  get #pages(): number {
    return this.#all.reduce((n, b) => n + b.pages, 0);
  }

  /** True once a START payload listed the blocks. */
  get sizesSeen(): boolean {
    return this.#sizesSeen;
  }

  /** At EOF: the START payload must have listed the blocks. */
  finish(at: number): void {
    if (!this.#sizesSeen) throw new StreamError(at, `stream ended without a "ram" section`);
  }

  /** Reads records up to and including EOS; a block list (MEM_SIZE) only in the START payload. */
  async load(r: StreamReader, phase: "start" | "part" | "end" | "full"): Promise<void> {
    const start = phase === "start";
    if (start || !this.#continueAcross) this.#last = null;
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
      if (flags === RamFlag.MULTIFD_FLUSH) {
        if (this.#multifd === null) {
          throw new StreamError(at, "a multifd FLUSH record, but this destination has no multifd");
        }
        // Pages of the channels up to this sync point land before anything after it.
        await this.#multifd.flush(at);
        continue;
      }
      const kind = flags & ~RamFlag.CONTINUE;
      if (
        kind !== RamFlag.ZERO && kind !== RamFlag.PAGE && kind !== RamFlag.XBZRLE &&
        kind !== RamFlag.COMPRESSED && kind !== RamFlag.REF
      ) {
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
      const received = this.#received?.get(block) ?? null;
      if (kind === RamFlag.COMPRESSED) {
        await this.#loadCompressed(r, block, addr, at);
        continue;
      }
      if (kind === RamFlag.REF) {
        await this.#loadRef(r, block, addr, at);
        continue;
      }
      if (received !== null) {
        if (kind === RamFlag.ZERO) received[page >>> 5] &= ~(1 << (page & 31));
        else received[page >>> 5] |= 1 << (page & 31);
      }
      if (kind === RamFlag.ZERO) {
        if (r.avail < 1) await r.need(1);
        const fill = r.u8();
        if (fill !== 0) {
          throw new StreamError(
            at,
            `ZERO page record with fill byte 0x${fill.toString(16)} (must be 0)`,
          );
        }
        if (block.isTouched(page)) {
          block.bytes.fill(0, addr, addr + PAGE_SIZE);
          block.markWritten(page);
        }
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
    const written = block.written;
    const length = block.length;
    const received = this.#received?.get(block) ?? null;
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
        if ((touched[page >>> 5] & bit) !== 0) {
          bytes.fill(0, addr, addr + PAGE_SIZE);
          if (written !== null) written[page >>> 5] |= bit;
        }
        table?.set(page, 0);
        if (received !== null) received[page >>> 5] &= ~bit;
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
        if (written !== null) written[page >>> 5] |= bit;
        if (received !== null) received[page >>> 5] |= bit;
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

  /**
   * Applies one compressed run (ferry's COMPRESSED record): method, mask, check and
   * length are checked, the data decompresses to exactly the pages the mask names
   * (never more: a "bomb" stops there) and their digests must sum to the check,
   * all before a page is written.
   */
  async #loadCompressed(r: StreamReader, block: RamBlock, addr: number, at: number): Promise<void> {
    if (r.avail < COMPRESSED_FIELDS) await r.need(COMPRESSED_FIELDS);
    const id = r.u8();
    const mask = r.be32();
    const check = r.be32();
    const length = r.be32();
    const codec: Codec | undefined = codecById(id);
    if (codec === undefined) {
      throw new StreamError(at, `compressed run with unknown method ${id}`);
    }
    if (codec !== this.#compression) {
      throw new StreamError(
        at,
        `the stream carries ${codec}-compressed pages but compress_method is ` +
          `${this.#compression} on this destination: set the same compress_method on both ends`,
      );
    }
    if (addr % (GROUP_PAGES * PAGE_SIZE) !== 0) {
      throw new StreamError(
        at,
        `compressed run at offset 0x${addr.toString(16)}, not a multiple of ${GROUP_PAGES} pages`,
      );
    }
    if (mask === 0) throw new StreamError(at, "compressed run carrying no page (mask 0)");
    const top = addr + (32 - Math.clz32(mask)) * PAGE_SIZE;
    if (top > block.length) {
      throw new StreamError(
        at,
        `compressed run reaches offset 0x${top.toString(16)}, beyond block "${block.name}" ` +
          `(length 0x${block.length.toString(16)})`,
      );
    }
    const n = popcount32(mask);
    const raw = n * PAGE_SIZE;
    if (length < 1 || length > raw - COMPRESSED_FIELDS) {
      throw new StreamError(
        at,
        `compressed run of ${length} bytes for ${n} pages (must be 1 to ${
          raw - COMPRESSED_FIELDS
        })`,
      );
    }
    if (r.avail < length) await r.need(length);
    let out: Uint8Array;
    try {
      out = decompressExact(codec, r.take(length), raw);
    } catch (e) {
      if (e instanceof DecompressError) throw new StreamError(at, e.message, { cause: e });
      throw e;
    }
    const digests = this.#runDigests;
    for (let i = 0; i < n; i++) digests[i] = this.#kernels.digest(out, i * PAGE_SIZE, PAGE_SIZE);
    const sum = runCheck(digests, n);
    if (sum !== check) {
      throw new StreamError(
        at,
        `compressed run's pages digest to 0x${sum.toString(16)}, its check says 0x${
          check.toString(16)
        }: the data is damaged`,
      );
    }
    const table = this.#lastTable;
    const received = this.#received?.get(block) ?? null;
    let bits = mask | 0;
    for (let i = 0; bits !== 0; i++) {
      const low = bits & -bits;
      bits ^= low;
      const page = addr / PAGE_SIZE + (31 - Math.clz32(low));
      block.bytes.set(out.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), page * PAGE_SIZE);
      block.markTouched(page);
      table?.set(page, digests[i]);
      if (received !== null) received[page >>> 5] |= 1 << (page & 31);
    }
    this.stats.compressedPages += n;
  }

  /**
   * Applies one same-page reference (ferry's REF record): copies a page of the
   * same block that this stream wrote data into, as it holds it now.
   */
  async #loadRef(r: StreamReader, block: RamBlock, addr: number, at: number): Promise<void> {
    const received = this.#received?.get(block);
    if (received === undefined) {
      throw new StreamError(
        at,
        "the stream carries a same-page reference but page_refs is off on this destination: " +
          "turn it on on both ends",
      );
    }
    if (r.avail < 8) await r.need(8);
    const [hi, lo] = r.be64Parts();
    const from = hi * TWO32 + lo;
    if (from % PAGE_SIZE !== 0 || from + PAGE_SIZE > block.length || from === addr) {
      throw new StreamError(
        at,
        `reference from offset 0x${addr.toString(16)} to 0x${from.toString(16)}: not another ` +
          `page of block "${block.name}" (length 0x${block.length.toString(16)})`,
      );
    }
    const source = from / PAGE_SIZE;
    if ((received[source >>> 5] & (1 << (source & 31))) === 0) {
      throw new StreamError(
        at,
        `reference to page 0x${from.toString(16)}, which this stream has not written data into`,
      );
    }
    block.bytes.copyWithin(addr, from, from + PAGE_SIZE);
    const page = addr / PAGE_SIZE;
    block.markTouched(page);
    this.#lastTable?.set(page, this.#kernels.digest(block.bytes, addr, PAGE_SIZE));
    received[page >>> 5] |= 1 << (page & 31);
    this.stats.refPages++;
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

const decoder = new TextDecoder();
