/**
 * The incoming half of QEMU's `ram` live section (ram_load, version 4):
 * docs/ARCHITECTURE.md, "Sections".
 * @module
 */
import type { RamBlock } from "../../vm/ram.ts";
import { PAGE_SIZE, RAM_FLAG_MASK, RamFlag } from "../format/constants.ts";
import { StreamError, type StreamReader } from "../format/reader.ts";
import { ENCODING_FLAG_XBZRLE, XbzrleError } from "../format/xbzrle.ts";
import { type Kernels, sharedKernels } from "../wasm/kernels.ts";
import { kernelsFor } from "../format/buffers.ts";
import type { DigestTable, MigrationDigests } from "../integrity.ts";
import { TWO32 } from "./ram_records.ts";
import type { SectionLoader } from "./section.ts";

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
export class RamLoader implements SectionLoader {
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

  /** At EOF: the START payload must have listed the blocks. */
  finish(at: number): void {
    if (!this.#sizesSeen) throw new StreamError(at, `stream ended without a "ram" section`);
  }

  /** Reads records up to and including EOS; a block list (MEM_SIZE) only in the START payload. */
  async load(r: StreamReader, phase: "start" | "part" | "end" | "full"): Promise<void> {
    const start = phase === "start";
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

const decoder = new TextDecoder();
