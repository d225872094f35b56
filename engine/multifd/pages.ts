/**
 * The work of multifd's worker threads (docs/ARCHITECTURE.md, "Multifd"): on the
 * source, `fillPacket` copies a packet's pages straight from guest RAM into a
 * shared packet slot, digests them and compresses them; on the destination,
 * `applyPacket` checks a received packet whole and only then writes its pages
 * straight into guest RAM. Both run in a Web Worker (worker.ts) or, in tests, on
 * the calling thread; they touch nothing but the RAM blocks and the slot.
 * @module
 */
import { isZeroPage, type RamBlock } from "../../vm/ram.ts";
import { PAGE_SHIFT, PAGE_SIZE } from "../format/constants.ts";
import {
  type Codec,
  CODEC_ID,
  codecById,
  compress,
  DecompressError,
  decompressExact,
} from "../format/compression.ts";
import type { Kernels } from "../wasm/kernels.ts";
import {
  decodeFixed,
  EntryKind,
  headerBytes,
  MultifdError,
  PACKET_FIXED,
  PacketFlag,
  putEntry,
  putPacketHeader,
  readEntry,
} from "./packet.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A packet to fill: pages of one block, with the packet's place on its channel. */
export interface FillJob {
  /** Index of the block in the migration's block list. */
  readonly block: number;
  /** Page numbers within the block. */
  readonly pages: Int32Array;
  readonly seq: number;
  readonly sync: number;
}

/** What filling a packet did. */
export interface FillResult {
  /** Bytes of the packet in the slot. */
  readonly length: number;
  readonly zero: number;
  readonly normal: number;
  /** Each page's digest, in job order (0 for a zero page). */
  readonly digests: Uint32Array;
  /** True when the data went compressed. */
  readonly compressed: boolean;
}

/** How the source's workers compress (null: plain packets). */
export type FillCompression = { readonly codec: Codec; readonly level: number } | null;

/**
 * Writes the packet for `job` into `slot` (at least SLOT_BYTES): zero pages as
 * ZERO entries (a page never written is known zero without reading it), the
 * others copied from guest RAM and digested, then compressed as one frame when
 * that shrinks them.
 */
export function fillPacket(
  blocks: readonly RamBlock[],
  slot: Uint8Array,
  job: FillJob,
  kernels: Kernels,
  compression: FillCompression,
): FillResult {
  const block = blocks[job.block];
  const name = encoder.encode(block.name);
  const count = job.pages.length;
  const table = PACKET_FIXED + name.length;
  const dataAt = headerBytes(name.length, count);
  const digests = new Uint32Array(count);
  let normal = 0;
  let check = 0;
  for (let i = 0; i < count; i++) {
    const page = job.pages[i];
    const offset = page * PAGE_SIZE;
    const zero = !block.isTouched(page) || isZeroPage(block.words, page << (PAGE_SHIFT - 2));
    putEntry(slot, table, i, offset, zero ? EntryKind.ZERO : EntryKind.PAGE);
    if (zero) continue;
    const at = dataAt + normal * PAGE_SIZE;
    slot.set(block.bytes.subarray(offset, offset + PAGE_SIZE), at);
    const d = kernels.digest(slot, at, PAGE_SIZE);
    digests[i] = d;
    check = (check + d) >>> 0;
    normal++;
  }
  let dataLength = normal * PAGE_SIZE;
  let flags = 0;
  let method = 0;
  if (compression !== null && normal > 0) {
    const out = compress(
      compression.codec,
      slot.subarray(dataAt, dataAt + dataLength),
      compression.level,
    );
    if (out.length < dataLength) {
      slot.set(out, dataAt);
      dataLength = out.length;
      flags = PacketFlag.COMPRESSED;
      method = CODEC_ID[compression.codec];
    }
  }
  putPacketHeader(slot, 0, {
    flags,
    method,
    count,
    seq: job.seq,
    sync: job.sync,
    dataLength,
    check,
    name,
  });
  return {
    length: dataAt + dataLength,
    zero: count - normal,
    normal,
    digests,
    compressed: flags !== 0,
  };
}

/** What applying a packet wrote. */
export interface ApplyResult {
  /** Index of the block written. */
  readonly block: number;
  /** The pages, in packet order. */
  readonly pages: Int32Array;
  /** Each page's digest (0 for a zero page). */
  readonly digests: Uint32Array;
  readonly zero: number;
  readonly normal: number;
  readonly compressed: boolean;
}

/**
 * Checks the packet in `slot[0..length)` whole (its header, that every entry
 * names a page inside a block of this guest, its data's size, method and
 * digests) and then writes its pages into guest RAM. Nothing is written from a
 * packet that fails a check; the error is a {@link MultifdError} naming the
 * channel and the byte of the channel's stream (`at` is the packet's).
 */
export function applyPacket(
  blocks: readonly RamBlock[],
  slot: Uint8Array,
  length: number,
  channel: number,
  at: number,
  kernels: Kernels,
  codec: Codec | null,
): ApplyResult {
  const { header, nameLength, total } = decodeFixed(slot, channel, at);
  if (total !== length) {
    throw new MultifdError(channel, at, `a packet of ${length} bytes, its header says ${total}`);
  }
  const name = decoder.decode(slot.subarray(PACKET_FIXED, PACKET_FIXED + nameLength));
  const index = blocks.findIndex((b) => b.name === name);
  if (index < 0) throw new MultifdError(channel, at, `a packet for unknown block "${name}"`);
  const block = blocks[index];
  const table = PACKET_FIXED + nameLength;
  const count = header.count;
  const pages = new Int32Array(count);
  let normal = 0;
  for (let i = 0; i < count; i++) {
    const [offset, kind] = readEntry(slot, table, i);
    if (kind !== EntryKind.ZERO && kind !== EntryKind.PAGE) {
      throw new MultifdError(channel, at, `entry ${i} has kind 0x${kind.toString(16)}`);
    }
    if (offset + PAGE_SIZE > block.length) {
      throw new MultifdError(
        channel,
        at,
        `entry ${i}: offset 0x${offset.toString(16)} beyond block "${name}" (length 0x${
          block.length.toString(16)
        })`,
      );
    }
    pages[i] = kind === EntryKind.PAGE ? offset / PAGE_SIZE : -1 - offset / PAGE_SIZE;
    if (kind === EntryKind.PAGE) normal++;
  }
  const dataAt = table + count * 8;
  const raw = normal * PAGE_SIZE;
  let data = slot.subarray(dataAt, dataAt + header.dataLength);
  const compressed = (header.flags & PacketFlag.COMPRESSED) !== 0;
  if (compressed) {
    const method = codecById(header.method);
    if (method === undefined || method !== codec) {
      throw new MultifdError(
        channel,
        at,
        `data compressed with method ${header.method}, but this destination's compress_method ` +
          `is ${codec ?? "none"}`,
      );
    }
    try {
      data = decompressExact(method, data, raw);
    } catch (e) {
      if (e instanceof DecompressError) {
        throw new MultifdError(channel, at, e.message, { cause: e });
      }
      throw e;
    }
  } else if (header.dataLength !== raw) {
    throw new MultifdError(
      channel,
      at,
      `${header.dataLength} bytes of data for ${normal} data pages (${raw} expected)`,
    );
  }
  const digests = new Uint32Array(count);
  let check = 0;
  for (let i = 0, n = 0; i < count; i++) {
    if (pages[i] < 0) continue;
    const d = kernels.digest(data, n * PAGE_SIZE, PAGE_SIZE);
    digests[i] = d;
    check = (check + d) >>> 0;
    n++;
  }
  if (check !== header.check) {
    throw new MultifdError(
      channel,
      at,
      `the data pages' digests sum to 0x${check.toString(16)}, the packet says 0x${
        header.check.toString(16)
      }: the data was damaged`,
    );
  }
  // Checked whole: now write.
  for (let i = 0, n = 0; i < count; i++) {
    const p = pages[i];
    if (p >= 0) {
      block.bytes.set(data.subarray(n * PAGE_SIZE, (n + 1) * PAGE_SIZE), p * PAGE_SIZE);
      // Other channels' workers mark pages of the same word at the same time.
      Atomics.or(block.touched, p >>> 5, 1 << (p & 31));
      n++;
    } else {
      const page = -1 - p;
      if (block.isTouched(page)) block.bytes.fill(0, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      pages[i] = page;
    }
  }
  return { block: index, pages, digests, zero: count - normal, normal, compressed };
}
