/**
 * End-to-end integrity of a migration (the `verify` capability, on by default;
 * docs/ARCHITECTURE.md, "Integrity"). Both ends digest the content of every RAM
 * page, disk chunk and device section as it moves: the source what it sends, the
 * destination what it writes. Each unit's latest digest is kept in a table, and
 * three running sums over the table (plain, weighted by the unit's index + 1, and
 * by its square) summarise it, so a page sent ten times counts once, with its
 * last content, and nothing is rehashed at the end. The source puts its sums in
 * the stream's vmdescription; the destination compares them with its own before
 * the guest may start. When exactly one unit differs, the three sums name it.
 *
 * The digest (engine/wasm/kernels.ts, `digest`) detects accidental damage as a
 * CRC-32 does; an attacker who can change the stream can also change the sums,
 * which only an authenticated channel prevents.
 * @module
 */

/** Name of the digest algorithm, carried in the stream so both ends agree. */
export const DIGEST_ALGORITHM = "ferry-d32";
/** Version of the integrity record in the vmdescription. */
export const INTEGRITY_VERSION = 1;

/** The three sums that summarise a table of unit digests (all unsigned 32-bit). */
export interface DigestSums {
  /** Number of units (pages, chunks) the table covers. */
  readonly units: number;
  /** Σ d(i). */
  readonly sum: number;
  /** Σ (i + 1)·d(i). */
  readonly weighted: number;
  /** Σ (i + 1)²·d(i). */
  readonly squared: number;
}

/**
 * A unit written with content digesting to d is recorded as d ^ WRITTEN, so that
 * one never written (0) differs from one written with zeroes: a destination page
 * whose record went astray keeps what it held before, and must not pass for the
 * zero page the source sent.
 */
export const WRITTEN = 0x9e3779b9;

/**
 * The latest digest of each of `units` units (RAM pages or disk chunks), and the
 * running sums over them. A unit never written counts as 0.
 */
export class DigestTable {
  /** Latest entry of each unit: its content digest ^ WRITTEN, or 0 if never written. */
  readonly digests: Uint32Array;
  #sum = 0;
  #weighted = 0;
  #squared = 0;

  constructor(readonly units: number) {
    this.digests = new Uint32Array(units);
  }

  /** Records that unit `i` now holds content digesting to `digest`. */
  set(i: number, digest: number): void {
    const d = (digest ^ WRITTEN) >>> 0;
    const old = this.digests[i];
    if (old === d) return;
    this.digests[i] = d;
    const delta = (d - old) | 0;
    const w = i + 1;
    this.#sum = (this.#sum + delta) | 0;
    this.#weighted = (this.#weighted + Math.imul(w, delta)) | 0;
    this.#squared = (this.#squared + Math.imul(Math.imul(w, w), delta)) | 0;
  }

  /** The sums now. */
  get sums(): DigestSums {
    return {
      units: this.units,
      sum: this.#sum >>> 0,
      weighted: this.#weighted >>> 0,
      squared: this.#squared >>> 0,
    };
  }
}

/** The digest of one device section's payload. */
export interface DeviceDigest {
  readonly section: string;
  readonly instance: number;
  /** Payload bytes. */
  readonly size: number;
  readonly digest: number;
}

/** What the source puts in the vmdescription under `ferry.integrity`. */
export interface IntegrityRecord {
  readonly version: number;
  readonly algorithm: string;
  /** One entry per RAM block, by name. */
  readonly ram: readonly (DigestSums & { readonly block: string })[];
  /** The disk's chunks, with block migration. */
  readonly disk?: DigestSums & { readonly device: string };
  readonly devices: readonly DeviceDigest[];
}

/** The content of a migration did not arrive as it was sent. */
export class IntegrityError extends Error {
  override readonly name = "IntegrityError";
  constructor(
    message: string,
    /** What differs: a RAM block, the disk, a device section, or the record itself. */
    readonly area: "ram" | "disk" | "device" | "record",
    /** The RAM block, disk device or section name. */
    readonly where?: string,
    /** The page or chunk index, when exactly one differs. */
    readonly unit?: number,
  ) {
    super(`Integrity check failed: ${message}`);
  }
}

/** Digests kept by one end of a migration, turned into or compared with a record. */
export class MigrationDigests {
  readonly ram: { readonly block: string; readonly table: DigestTable }[];
  disk: { readonly device: string; readonly table: DigestTable } | null = null;
  readonly devices: DeviceDigest[] = [];

  constructor(blocks: readonly { readonly name: string; readonly pages: number }[]) {
    this.ram = blocks.map((b) => ({ block: b.name, table: new DigestTable(b.pages) }));
  }

  /** Starts digesting a disk of `chunks` chunks. */
  trackDisk(device: string, chunks: number): DigestTable {
    this.disk = { device, table: new DigestTable(chunks) };
    return this.disk.table;
  }

  /** Records a device section's payload digest. */
  addDevice(section: string, instance: number, size: number, digest: number): void {
    this.devices.push({ section, instance, size, digest });
  }

  /** The record the source puts in the stream. */
  record(): IntegrityRecord {
    return {
      version: INTEGRITY_VERSION,
      algorithm: DIGEST_ALGORITHM,
      ram: this.ram.map((r) => ({ block: r.block, ...r.table.sums })),
      ...(this.disk ? { disk: { device: this.disk.device, ...this.disk.table.sums } } : {}),
      devices: this.devices.map((d) => ({ ...d })),
    };
  }

  /**
   * Compares what this (destination) end wrote with the source's record; throws an
   * IntegrityError naming the first difference (the block and, when only one
   * differs, the page).
   */
  verify(remote: IntegrityRecord): void {
    for (const r of this.ram) {
      const theirs = remote.ram.find((x) => x.block === r.block);
      if (!theirs) {
        throw new IntegrityError(
          `the source sent no digest for RAM block "${r.block}"`,
          "record",
          r.block,
        );
      }
      const diff = differs(r.table, theirs);
      if (diff !== null) {
        throw new IntegrityError(
          `RAM block "${r.block}" ${
            describeUnits(diff, "page", 4096)
          } other content than the source sent`,
          "ram",
          r.block,
          diff >= 0 ? diff : undefined,
        );
      }
    }
    if (remote.ram.length !== this.ram.length) {
      throw new IntegrityError(
        `the source digested ${remote.ram.length} RAM blocks, this guest has ${this.ram.length}`,
        "record",
      );
    }
    if (Boolean(remote.disk) !== Boolean(this.disk)) {
      throw new IntegrityError(
        remote.disk
          ? "the source digested a disk this migration did not carry"
          : "the source sent no digest for the disk it migrated",
        "record",
      );
    }
    if (this.disk && remote.disk) {
      const diff = differs(this.disk.table, remote.disk);
      if (diff !== null) {
        throw new IntegrityError(
          `disk "${this.disk.device}" ${
            describeUnits(diff, "chunk", 1 << 20)
          } other content than the source sent`,
          "disk",
          this.disk.device,
          diff >= 0 ? diff : undefined,
        );
      }
    }
    for (const mine of this.devices) {
      const theirs = remote.devices.find((d) =>
        d.section === mine.section && d.instance === mine.instance
      );
      if (!theirs || theirs.size !== mine.size || theirs.digest !== mine.digest) {
        throw new IntegrityError(
          `device state of section "${mine.section}" (instance ${mine.instance}) is not what the source sent`,
          "device",
          mine.section,
        );
      }
    }
    if (remote.devices.length !== this.devices.length) {
      throw new IntegrityError(
        `the source digested ${remote.devices.length} device sections, ${this.devices.length} arrived`,
        "record",
      );
    }
  }
}

/**
 * null when the table matches the sums; else the one unit that differs (found
 * from the three sums), or -1 when more than one does (or the sums cannot tell).
 */
function differs(table: DigestTable, theirs: DigestSums): number | null {
  const mine = table.sums;
  if (
    mine.units === theirs.units && mine.sum === theirs.sum && mine.weighted === theirs.weighted &&
    mine.squared === theirs.squared
  ) return null;
  if (mine.units !== theirs.units) return -1;
  return locateOne(
    (mine.sum - theirs.sum) | 0,
    (mine.weighted - theirs.weighted) | 0,
    (mine.squared - theirs.squared) | 0,
    mine.units,
  );
}

/** Most candidate units locateOne() checks (when the difference is a multiple of 2^k). */
const MAX_CANDIDATES = 1 << 12;

/**
 * The index i < `units` such that one unit changed by Δ explains the differences
 * of the three sums (ds = Δ, dw = (i+1)Δ, dq = (i+1)²Δ, mod 2³²), or -1 when no
 * single unit does, or more than one could (Δ divisible by a large power of 2).
 */
export function locateOne(ds: number, dw: number, dq: number, units: number): number {
  ds |= 0;
  dw |= 0;
  dq |= 0;
  if (ds === 0) return -1;
  // ds = 2^k · odd, so dw / 2^k = (i+1) · odd mod 2^(32-k): that fixes (i+1) mod 2^(32-k).
  const k = 31 - Math.clz32(ds & -ds);
  if (k > 0 && (dw & ((1 << k) - 1)) !== 0) return -1;
  const modulus = 2 ** (32 - k);
  const base = (Math.imul(dw >>> k, inverse(ds >>> k)) >>> 0) % modulus;
  let found = -1;
  for (let w = base, n = 0; w <= units && n < MAX_CANDIDATES; w += modulus, n++) {
    if (w !== 0 && Math.imul(w, ds) === dw && Math.imul(Math.imul(w, w), ds) === dq) {
      if (found >= 0) return -1; // ambiguous
      found = w - 1;
    }
  }
  return found;
}

/** The inverse of an odd number modulo 2³² (Newton's iteration). */
function inverse(odd: number): number {
  let x = odd; // correct to 3 bits
  for (let i = 0; i < 5; i++) x = Math.imul(x, 2 - Math.imul(odd, x));
  return x;
}

function describeUnits(index: number, unit: string, size: number): string {
  if (index < 0) return `holds, in one or more ${unit}s,`;
  const offset = index * size;
  return `${unit} 0x${index.toString(16)} (offset 0x${offset.toString(16)}) holds`;
}

/** Checks and returns a record read from a stream's vmdescription; throws IntegrityError. */
export function parseIntegrityRecord(value: unknown): IntegrityRecord {
  const bad = (why: string) =>
    new IntegrityError(`the stream's integrity record is malformed: ${why}`, "record");
  if (typeof value !== "object" || value === null) throw bad("not an object");
  const v = value as Record<string, unknown>;
  if (v.version !== INTEGRITY_VERSION) throw bad(`version ${JSON.stringify(v.version)}`);
  if (v.algorithm !== DIGEST_ALGORITHM) {
    throw new IntegrityError(
      `the source digests with ${
        JSON.stringify(v.algorithm)
      }, this ferry with "${DIGEST_ALGORITHM}"`,
      "record",
    );
  }
  const u32 = (x: unknown) => typeof x === "number" && Number.isInteger(x) && x >= 0 && x < 2 ** 32;
  const sums = (x: unknown, name: string): boolean => {
    if (typeof x !== "object" || x === null) return false;
    const s = x as Record<string, unknown>;
    return typeof s[name] === "string" && Number.isSafeInteger(s.units) &&
      u32(s.sum) && u32(s.weighted) && u32(s.squared);
  };
  if (!Array.isArray(v.ram) || !v.ram.every((r) => sums(r, "block"))) throw bad("ram");
  if (v.disk !== undefined && !sums(v.disk, "device")) throw bad("disk");
  if (
    !Array.isArray(v.devices) ||
    !v.devices.every((d) =>
      typeof d === "object" && d !== null && typeof d.section === "string" &&
      u32(d.instance) && Number.isSafeInteger(d.size) && u32(d.digest)
    )
  ) throw bad("devices");
  return v as unknown as IntegrityRecord;
}
