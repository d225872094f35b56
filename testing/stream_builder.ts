/**
 * Builds QEMU savevm v3 migration streams byte by byte, independently of the
 * engine's writer, so loader tests can produce valid streams and every kind of
 * broken one. Every helper that ends a record or section piece records the offset
 * in `boundaries` (truncation tests cut the stream there).
 * @module
 */

import { type IntegrityRecord, MigrationDigests } from "../engine/integrity.ts";
import { digestTs } from "../engine/wasm/kernels.ts";

/** Section type bytes of the stream format, written out here on purpose. */
export const T = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM record flags. */
export const F = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  /** ferry's compressed run. */
  COMPRESSED: 0x400,
  /** ferry's same-page reference. */
  REF: 0x800,
} as const;

/** Block record flags (the `block` section). */
export const BF = {
  DEVICE_BLOCK: 0x01,
  EOS: 0x02,
  PROGRESS: 0x04,
  ZERO_BLOCK: 0x08,
} as const;

/** "QEVM". */
export const MAGIC = 0x5145564d;
export const PAGE = 4096;

const encoder = new TextEncoder();

export class StreamBuilder {
  #bytes: number[] = [];
  /** Stream offsets at which a record or section piece ends. */
  readonly boundaries: number[] = [];

  /** Current length = offset of the next byte. */
  get offset(): number {
    return this.#bytes.length;
  }

  /** Records the current offset as a boundary. */
  mark(): this {
    if (this.boundaries[this.boundaries.length - 1] !== this.offset) {
      this.boundaries.push(this.offset);
    }
    return this;
  }

  u8(v: number): this {
    this.#bytes.push(v & 0xff);
    return this;
  }

  be16(v: number): this {
    return this.u8(v >>> 8).u8(v);
  }

  be32(v: number): this {
    return this.u8(v >>> 24).u8(v >>> 16).u8(v >>> 8).u8(v);
  }

  /** Big-endian 64-bit from a number (< 2^53) or a bigint. */
  be64(v: number | bigint): this {
    const big = BigInt(v);
    this.be32(Number(big >> 32n));
    return this.be32(Number(big & 0xffffffffn));
  }

  raw(bytes: Uint8Array | readonly number[]): this {
    for (const b of bytes) this.#bytes.push(b & 0xff);
    return this;
  }

  /** u8 length + UTF-8 bytes. */
  str8(s: string): this {
    const b = encoder.encode(s);
    return this.u8(b.length).raw(b);
  }

  /** `be32 magic, be32 version`. */
  header(magic = MAGIC, version = 3): this {
    return this.be32(magic).be32(version).mark();
  }

  /** `0x07, be32 len, name`. */
  configuration(name = "ferry-pc"): this {
    const b = encoder.encode(name);
    return this.u8(T.CONFIGURATION).be32(b.length).raw(b).mark();
  }

  /** START/FULL header: `u8 type, be32 id, u8 idlen, idstr, be32 instance, be32 version`. */
  sectionStart(type: number, id: number, name: string, version: number, instance = 0): this {
    return this.u8(type).be32(id).str8(name).be32(instance).be32(version).mark();
  }

  start(id: number, name = "ram", version = 4, instance = 0): this {
    return this.sectionStart(T.START, id, name, version, instance);
  }

  full(id: number, name = "vcpu", version = 1, instance = 0): this {
    return this.sectionStart(T.FULL, id, name, version, instance);
  }

  part(id: number): this {
    return this.u8(T.PART).be32(id).mark();
  }

  end(id: number): this {
    return this.u8(T.END).be32(id).mark();
  }

  footer(id: number, marker: number = T.FOOTER): this {
    return this.u8(marker).be32(id).mark();
  }

  eof(): this {
    return this.u8(T.EOF).mark();
  }

  /** `0x06, be32 len, json`; `json` may be raw bytes or text; `declared` overrides the length. */
  vmdescription(json: unknown, declared?: number): this {
    const body = json instanceof Uint8Array
      ? json
      : encoder.encode(typeof json === "string" ? json : JSON.stringify(json));
    return this.u8(T.VMDESCRIPTION).be32(declared ?? body.length).mark().raw(body).mark();
  }

  /** A RAM record header `be64 offset | flags`, plus `u8 len, name` when `block` is given. */
  ramHeader(offset: number | bigint, flags: number, block?: string): this {
    this.be64(BigInt(offset) | BigInt(flags));
    if (block !== undefined) this.str8(block);
    return this;
  }

  /** START payload head: `be64 total | MEM_SIZE`, then per block `u8 len, name, be64 length`. */
  memSize(total: number, blocks: readonly (readonly [string, number])[]): this {
    this.ramHeader(total, F.MEM_SIZE).mark();
    for (const [name, length] of blocks) this.str8(name).be64(length).mark();
    return this;
  }

  /** `be64 EOS`. */
  eos(): this {
    return this.ramHeader(0, F.EOS).mark();
  }

  /** A ZERO record; `block` null means CONTINUE (same block as the last record). */
  zero(offset: number, block: string | null, fill = 0): this {
    if (block === null) this.ramHeader(offset, F.ZERO | F.CONTINUE);
    else this.ramHeader(offset, F.ZERO, block);
    return this.u8(fill).mark();
  }

  /** A PAGE record with 4096 bytes of `data`; `block` null means CONTINUE. */
  page(offset: number, block: string | null, data: Uint8Array): this {
    if (data.length !== PAGE) throw new RangeError("a page is 4096 bytes");
    if (block === null) this.ramHeader(offset, F.PAGE | F.CONTINUE);
    else this.ramHeader(offset, F.PAGE, block);
    return this.raw(data).mark();
  }

  /**
   * A compressed run (ferry's): `u8 method, be32 mask, be32 check, be32 length`,
   * then `data`; `block` null means CONTINUE.
   */
  compressed(
    group: number,
    block: string | null,
    run: { method: number; mask: number; check: number; data: Uint8Array; length?: number },
  ): this {
    if (block === null) this.ramHeader(group, F.COMPRESSED | F.CONTINUE);
    else this.ramHeader(group, F.COMPRESSED, block);
    this.u8(run.method).be32(run.mask >>> 0).be32(run.check >>> 0);
    return this.be32(run.length ?? run.data.length).raw(run.data).mark();
  }

  /** A same-page reference (ferry's) from `offset` to `from`; `block` null means CONTINUE. */
  ref(offset: number, block: string | null, from: number): this {
    if (block === null) this.ramHeader(offset, F.REF | F.CONTINUE);
    else this.ramHeader(offset, F.REF, block);
    return this.be64(from).mark();
  }

  /** The whole START section of `ram` (id, block list, EOS, footer). */
  ramStart(id: number, blocks: readonly (readonly [string, number])[]): this {
    const total = blocks.reduce((n, [, len]) => n + len, 0);
    return this.start(id).memSize(total, blocks).eos().footer(id);
  }

  /**
   * A block record: `be64 (sector << 9) | flags`, then `u8 len, device` when
   * `device` is given, then `data` (1 MiB for a DEVICE_BLOCK without ZERO_BLOCK).
   */
  blockRecord(sector: number | bigint, flags: number, device?: string, data?: Uint8Array): this {
    this.be64((BigInt(sector) << 9n) | BigInt(flags));
    if (device !== undefined) this.str8(device);
    if (data) this.raw(data);
    return this.mark();
  }

  /** `be64 EOS` of the block section. */
  blockEos(): this {
    return this.blockRecord(0, BF.EOS);
  }

  /** The whole FULL `vcpu` section holding TestGuest's 8-byte counter. */
  vcpu(id: number, counter: bigint): this {
    this.full(id);
    return this.be64(counter).mark().footer(id);
  }

  build(): Uint8Array {
    return Uint8Array.from(this.#bytes);
  }
}

/** The vmdescription a ferry with a TestGuest writes. */
export const TEST_GUEST_VMDESC = {
  page_size: 4096,
  devices: [{
    name: "vcpu",
    instance_id: 0,
    vmsd_name: "vcpu",
    version: 1,
    fields: [{ name: "counter", type: "uint64", size: 8 }],
  }],
};

/** Block layout of the small guest the loader tests use. */
export const SMALL_BLOCKS: readonly (readonly [string, number])[] = [
  ["pc.ram", 8 * PAGE],
  ["vga.vram", 4 * PAGE],
];

/** Deterministic page contents (never all zero). */
export function pageData(seed: number): Uint8Array {
  const out = new Uint8Array(PAGE);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < PAGE; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  out[0] = seed & 0xff || 1;
  return out;
}

/** What {@link buildValidStream} encoded: per block, page index → content (absent = zero). */
export interface EncodedGuest {
  readonly bytes: Uint8Array;
  readonly boundaries: readonly number[];
  readonly pages: ReadonlyMap<string, ReadonlyMap<number, Uint8Array>>;
  readonly counter: bigint;
}

/**
 * The integrity record a source that sent these final page contents and vcpu
 * counter puts in its vmdescription (the `verify` capability).
 */
export function integrityRecordFor(
  blocks: readonly (readonly [string, number])[],
  pages: ReadonlyMap<string, ReadonlyMap<number, Uint8Array>>,
  counter: bigint,
): IntegrityRecord {
  const digests = new MigrationDigests(blocks.map(([name, len]) => ({ name, pages: len / PAGE })));
  for (const { block, table } of digests.ram) {
    const sent = pages.get(block);
    for (let p = 0; p < table.units; p++) {
      const data = sent?.get(p);
      table.set(p, data ? digestTs(data, 0, PAGE) : 0); // every page is sent, zero or not
    }
  }
  const state = new Uint8Array(8);
  new DataView(state.buffer).setBigUint64(0, counter);
  digests.addDevice("vcpu", 0, 8, digestTs(state, 0, 8));
  return digests.record();
}

/** TEST_GUEST_VMDESC carrying an integrity record. */
export function vmdescWithIntegrity(record: IntegrityRecord): Record<string, unknown> {
  return { ...TEST_GUEST_VMDESC, ferry: { integrity: record } };
}

/**
 * A complete valid stream for {@link SMALL_BLOCKS}: header, configuration, START
 * ram, a PART with part of the pages, END with the rest, FULL vcpu, EOF,
 * vmdescription (with the integrity record of the `verify` capability unless
 * `integrity` is false). Every page of every block is sent (ZERO or PAGE), using
 * CONTINUE after the first record of each block in each section.
 */
export function buildValidStream(
  opts: { counter?: bigint; dataPages?: number; integrity?: boolean } = {},
): EncodedGuest {
  const counter = opts.counter ?? 0x0102030405060708n;
  const b = new StreamBuilder();
  b.header().configuration().ramStart(0, SMALL_BLOCKS);
  const pages = new Map<string, Map<number, Uint8Array>>();
  // Non-zero pages: pc.ram 1 and 5, vga.vram 2 (fewer when dataPages says so).
  const wanted: [string, number][] = [["pc.ram", 1], ["vga.vram", 2], ["pc.ram", 5]]
    .slice(0, opts.dataPages ?? 3) as [string, number][];
  for (const [name] of SMALL_BLOCKS) pages.set(name, new Map());
  for (const [name, p] of wanted) {
    pages.get(name)!.set(p, pageData(p + (name === "pc.ram" ? 0 : 100)));
  }
  const emit = (name: string, from: number, to: number) => {
    let first = true;
    for (let p = from; p < to; p++) {
      const data = pages.get(name)!.get(p);
      const block = first ? name : null;
      if (data) b.page(p * PAGE, block, data);
      else b.zero(p * PAGE, block);
      first = false;
    }
  };
  b.part(0);
  emit("pc.ram", 0, 4);
  emit("vga.vram", 0, 4);
  b.eos().footer(0);
  b.end(0);
  emit("pc.ram", 4, 8);
  b.eos().footer(0);
  b.vcpu(1, counter).eof().vmdescription(
    opts.integrity === false
      ? TEST_GUEST_VMDESC
      : vmdescWithIntegrity(integrityRecordFor(SMALL_BLOCKS, pages, counter)),
  );
  return { bytes: b.build(), boundaries: [...b.boundaries], pages, counter };
}
