/**
 * ferry's multifd framing (docs/ARCHITECTURE.md, "Multifd"): the hello that
 * opens each page channel and the packets that follow it, in the spirit of
 * QEMU's MultiFDInit_t and MultiFDPacket_t (magic, version, flags, page count,
 * offsets). All integers are big-endian. These functions read and write plain
 * or shared buffers, so the workers and the tests use them alike.
 * @module
 */
import { PAGE_SIZE, RamFlag } from "../format/constants.ts";

/** "FMDC": the first bytes of a multifd channel's hello. */
export const HELLO_MAGIC = 0x464d4443;
/** "FMDP": the first bytes of every packet. */
export const PACKET_MAGIC = 0x464d4450;
/** The framing's version. */
export const MULTIFD_VERSION = 1;
/** Bytes of a session id (random per migration; the main stream announces it). */
export const SESSION_BYTES = 16;
/** Bytes of a hello: magic, version, session, channel index, channel count. */
export const HELLO_BYTES = 4 + 4 + SESSION_BYTES + 2 + 2;
/** Most pages one packet carries (QEMU's 128 pages of 4 KiB: 512 KiB). */
export const MAX_PACKET_PAGES = 128;
/** Most channels a migration opens (the `multifd_channels` parameter's range). */
export const MAX_CHANNELS = 16;
/** The fixed part of a packet header, before the block name. */
export const PACKET_FIXED = 4 + 1 + 1 + 2 + 4 + 4 + 4 + 4 + 1;
/** Room for the largest packet: header, a 255-byte name, the page table and raw pages. */
export const SLOT_BYTES = PACKET_FIXED + 255 + MAX_PACKET_PAGES * 8 +
  MAX_PACKET_PAGES * PAGE_SIZE;

/** Packet flags. */
export const PacketFlag = {
  /** A sync point: no pages; every channel sends the k-th before the main stream's k-th FLUSH. */
  SYNC: 0x01,
  /** The data pages are one compressed frame (method byte: 1 zstd, 2 LZ4). */
  COMPRESSED: 0x02,
} as const;

/** The kinds a page-table entry may carry in its low bits (RamFlag's values). */
export const EntryKind = { ZERO: RamFlag.ZERO, PAGE: RamFlag.PAGE } as const;

/** A malformed hello or packet: what is wrong, on which channel, at which byte of it. */
export class MultifdError extends Error {
  override readonly name = "MultifdError";
  constructor(
    readonly channel: number,
    readonly offset: number,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(
      `Invalid multifd channel ${channel} at byte 0x${offset.toString(16)}: ${reason}`,
      options,
    );
  }
}

/** A channel's hello. */
export interface Hello {
  readonly session: Uint8Array;
  readonly index: number;
  readonly count: number;
}

/** Encodes a hello. */
export function encodeHello(hello: Hello): Uint8Array {
  if (hello.session.length !== SESSION_BYTES) throw new RangeError("session id must be 16 bytes");
  const out = new Uint8Array(HELLO_BYTES);
  const v = new DataView(out.buffer);
  v.setUint32(0, HELLO_MAGIC);
  v.setUint32(4, MULTIFD_VERSION);
  out.set(hello.session, 8);
  v.setUint16(8 + SESSION_BYTES, hello.index);
  v.setUint16(10 + SESSION_BYTES, hello.count);
  return out;
}

/** Decodes a hello, or returns why these bytes are not one. */
export function decodeHello(bytes: Uint8Array): Hello | string {
  if (bytes.length < HELLO_BYTES) return `a hello of ${bytes.length} bytes (${HELLO_BYTES} needed)`;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0) !== HELLO_MAGIC) {
    return `sent no multifd hello (magic 0x${v.getUint32(0).toString(16).padStart(8, "0")})`;
  }
  const version = v.getUint32(4);
  if (version !== MULTIFD_VERSION) {
    return `multifd version ${version}, expected ${MULTIFD_VERSION}`;
  }
  const index = v.getUint16(8 + SESSION_BYTES);
  const count = v.getUint16(10 + SESSION_BYTES);
  if (count < 1 || count > MAX_CHANNELS || index >= count) {
    return `channel ${index} of ${count} (at most ${MAX_CHANNELS} channels)`;
  }
  return { session: bytes.slice(8, 8 + SESSION_BYTES), index, count };
}

/** A packet's header. */
export interface PacketHeader {
  readonly flags: number;
  /** Codec id of compressed data (0 when plain). */
  readonly method: number;
  /** Entries in the page table. */
  readonly count: number;
  /** The packet's number on its channel, from 0 (sync packets included). */
  readonly seq: number;
  /** Sync points this channel passed before this packet; a SYNC packet carries its own number. */
  readonly sync: number;
  /** Bytes of page data after the table. */
  readonly dataLength: number;
  /** Sum of the data pages' ferry-d32 digests, modulo 2³². */
  readonly check: number;
  /** The RAM block's name, as encoded bytes (empty for a SYNC packet). */
  readonly name: Uint8Array;
}

/** Bytes of the header of a packet whose block name has `nameLength` bytes, table included. */
export function headerBytes(nameLength: number, count: number): number {
  return PACKET_FIXED + nameLength + count * 8;
}

/** Writes a packet header at `at` of `buf` (the table follows it); returns the table's offset. */
export function putPacketHeader(buf: Uint8Array, at: number, h: PacketHeader): number {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  v.setUint32(at, PACKET_MAGIC);
  v.setUint8(at + 4, h.flags);
  v.setUint8(at + 5, h.method);
  v.setUint16(at + 6, h.count);
  v.setUint32(at + 8, h.seq);
  v.setUint32(at + 12, h.sync);
  v.setUint32(at + 16, h.dataLength);
  v.setUint32(at + 20, h.check >>> 0);
  v.setUint8(at + 24, h.name.length);
  buf.set(h.name, at + PACKET_FIXED);
  return at + PACKET_FIXED + h.name.length;
}

/** Writes table entry `i` (page offset | kind) of the table at `table`. */
export function putEntry(buf: Uint8Array, table: number, i: number, offset: number, kind: number) {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  v.setUint32(table + i * 8, Math.floor(offset / 2 ** 32));
  v.setUint32(table + i * 8 + 4, ((offset >>> 0) | kind) >>> 0);
}

/** Reads table entry `i`: the page offset and its kind bits. */
export function readEntry(buf: Uint8Array, table: number, i: number): [number, number] {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const hi = v.getUint32(table + i * 8);
  const lo = v.getUint32(table + i * 8 + 4);
  return [hi * 2 ** 32 + ((lo & ~0xfff) >>> 0), lo & 0xfff];
}

/** A SYNC packet: the channel's `seq`-th packet, its `sync`-th sync point. */
export function syncPacket(seq: number, sync: number): Uint8Array {
  const out = new Uint8Array(PACKET_FIXED);
  putPacketHeader(out, 0, {
    flags: PacketFlag.SYNC,
    method: 0,
    count: 0,
    seq,
    sync,
    dataLength: 0,
    check: 0,
    name: new Uint8Array(0),
  });
  return out;
}

/**
 * Decodes the fixed part of a packet header at `buf[0..PACKET_FIXED)` and checks
 * what can be checked without the block: magic, flags, counts and lengths.
 * Returns the header (with an empty name: the caller reads `nameLength` more
 * bytes) and the packet's total size, or throws a {@link MultifdError}.
 */
export function decodeFixed(
  buf: Uint8Array,
  channel: number,
  at: number,
): { header: Omit<PacketHeader, "name">; nameLength: number; total: number } {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = v.getUint32(0);
  if (magic !== PACKET_MAGIC) {
    throw new MultifdError(
      channel,
      at,
      `bad packet magic 0x${magic.toString(16).padStart(8, "0")}, expected 0x${
        PACKET_MAGIC.toString(16)
      } ("FMDP")`,
    );
  }
  const flags = v.getUint8(4);
  const method = v.getUint8(5);
  const count = v.getUint16(6);
  const header = {
    flags,
    method,
    count,
    seq: v.getUint32(8),
    sync: v.getUint32(12),
    dataLength: v.getUint32(16),
    check: v.getUint32(20),
  };
  const nameLength = v.getUint8(24);
  if ((flags & ~(PacketFlag.SYNC | PacketFlag.COMPRESSED)) !== 0) {
    throw new MultifdError(channel, at, `unknown packet flags 0x${flags.toString(16)}`);
  }
  if (flags & PacketFlag.SYNC) {
    if (flags !== PacketFlag.SYNC || count !== 0 || header.dataLength !== 0 || nameLength !== 0) {
      throw new MultifdError(channel, at, "a SYNC packet that carries pages");
    }
    return { header, nameLength, total: PACKET_FIXED };
  }
  if (count === 0 || count > MAX_PACKET_PAGES) {
    throw new MultifdError(
      channel,
      at,
      `a packet of ${count} pages (1 to ${MAX_PACKET_PAGES})`,
    );
  }
  if (nameLength === 0) throw new MultifdError(channel, at, "a packet without a block name");
  if (header.dataLength > count * PAGE_SIZE) {
    throw new MultifdError(
      channel,
      at,
      `${header.dataLength} bytes of data for ${count} pages (at most ${count * PAGE_SIZE})`,
    );
  }
  if ((flags & PacketFlag.COMPRESSED) === 0 && method !== 0) {
    throw new MultifdError(channel, at, `a plain packet names method ${method}`);
  }
  return { header, nameLength, total: headerBytes(nameLength, count) + header.dataLength };
}
