/**
 * The guest's disk: a raw image file, addressed in 1 MiB chunks.
 *
 * - The file is the only copy of the disk's bytes. The vCPU worker opens the same
 *   file and writes it directly (4 KiB at a time); after each write it sets the
 *   chunk's bit in `dirty` (the migration's dirty log, collected with
 *   Atomics.exchange like RAM's) and in `written` (see below), so a migration that
 *   clears a bit and then reads the chunk never misses a write.
 * - `written` is the "changed since the base" bitmap that `inc: true` sends: one bit
 *   per chunk, persisted in the sidecar file `PATH.ferry-dirty` (chunk c is bit
 *   c & 7 of byte c >> 3). The base is the image as it was when the sidecar was
 *   created: a new image (all zeroes) or an existing image without a sidecar gets
 *   an all-zero sidecar. Deleting the sidecar declares the current image the base.
 * - `PATH.ferry-incomplete` marks an image an incoming block migration is writing;
 *   it is removed only after the image was fsynced at the end of a complete stream.
 *   A guest whose image carries it cannot be started.
 */
import { createHash } from "node:crypto";

/** Bytes per chunk: the unit of the dirty bitmap and of block migration records. */
export const DISK_CHUNK = 1 << 20;
/** The device name block records carry. */
export const DISK_DEVICE = "disk0";
/** Largest image ferry accepts. */
export const MAX_DISK_SIZE = 2 ** 40;

/** A disk that cannot be opened, created or addressed. */
export class DiskError extends Error {
  override readonly name = "DiskError";
}

/** What the vCPU worker needs to write the disk. */
export interface DiskShared {
  readonly path: string;
  readonly size: number;
  readonly dirty: SharedArrayBuffer;
  readonly written: SharedArrayBuffer;
}

/** SHA-256 of a whole image. */
export interface DiskDigest {
  readonly device: string;
  readonly size: number;
  readonly sha256: string;
  readonly incomplete: boolean;
}

/** Sidecar path of the "written since the base" bitmap. */
export function sidecarPath(path: string): string {
  return `${path}.ferry-dirty`;
}

/** Marker path of an image an incoming migration has not finished. */
export function incompletePath(path: string): string {
  return `${path}.ferry-incomplete`;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A raw disk image with its dirty log and written-since-base bitmap. */
export class Disk {
  readonly name = DISK_DEVICE;
  readonly chunks: number;
  /** Migration dirty log: one bit per chunk, set by the vCPU worker. */
  readonly dirty: Uint32Array;
  /** Chunks written since the base (the sidecar's content). */
  readonly written: Uint32Array;
  readonly #file: Deno.FsFile;
  #closed = false;
  /** A background fsync in flight (see flushSoon). */
  #syncing: Promise<void> | null = null;
  /** This process created the image, so its base is all zeroes (see knownZero). */
  #createdEmpty = false;

  private constructor(readonly path: string, readonly size: number, file: Deno.FsFile) {
    this.#file = file;
    this.chunks = size / DISK_CHUNK;
    const words = Math.ceil(this.chunks / 32);
    this.dirty = new Uint32Array(new SharedArrayBuffer(words * 4));
    this.written = new Uint32Array(new SharedArrayBuffer(words * 4));
  }

  /**
   * Opens `path`, creating it (sparse, all zeroes) at `size` bytes when absent. An
   * existing image must be a positive multiple of 1 MiB and, when `size` is given,
   * exactly that size.
   */
  static open(path: string, size?: number): Disk {
    if (size !== undefined) checkSize(size, `--disk-size ${size}`);
    const present = exists(path);
    if (!present && size === undefined) {
      throw new DiskError(`Disk image ${path} does not exist: give --disk-size to create it`);
    }
    const file = Deno.openSync(path, { read: true, write: true, create: !present });
    try {
      if (!present) file.truncateSync(size!);
      const actual = file.statSync().size;
      checkSize(actual, `disk image ${path} of ${actual} bytes`);
      if (size !== undefined && actual !== size) {
        throw new DiskError(`Disk image ${path} is ${actual} bytes, not the --disk-size ${size}`);
      }
      const disk = new Disk(path, actual, file);
      disk.#loadSidecar(present);
      disk.#createdEmpty = !present;
      return disk;
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** The buffers the vCPU worker shares. */
  get shared(): DiskShared {
    return {
      path: this.path,
      size: this.size,
      dirty: this.dirty.buffer as SharedArrayBuffer,
      written: this.written.buffer as SharedArrayBuffer,
    };
  }

  /** True while an incoming migration's marker is on the image. */
  get incomplete(): boolean {
    return exists(incompletePath(this.path));
  }

  /** Puts the incomplete marker on the image (before an incoming migration writes it). */
  markIncomplete(): void {
    Deno.writeTextFileSync(
      incompletePath(this.path),
      "an incoming block migration did not finish\n",
    );
  }

  /**
   * Starts an fsync in the background unless one is running, so the final one in
   * commit() (which the switchover waits for) has little left to write back.
   */
  flushSoon(): void {
    if (this.#syncing || this.#closed) return;
    this.#syncing = this.#file.sync().catch(() => {}).finally(() => {
      this.#syncing = null;
    });
  }

  /** True while a background fsync runs. */
  get flushing(): boolean {
    return this.#syncing !== null;
  }

  /** Waits for the background fsync in flight, if any. */
  async flushed(): Promise<void> {
    await this.#syncing;
  }

  /** fsyncs the image and the sidecar, then removes the incomplete marker. */
  async commit(): Promise<void> {
    await this.#syncing;
    await this.#file.sync();
    this.persist();
    try {
      Deno.removeSync(incompletePath(this.path));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  /**
   * Moves the dirty log into `into` (OR) and clears it atomically; returns how many
   * bits were newly set in `into`.
   */
  syncDirty(into: Uint32Array): number {
    let added = 0;
    for (let w = 0; w < this.dirty.length; w++) {
      if (this.dirty[w] === 0) continue;
      const bits = Atomics.exchange(this.dirty, w, 0);
      const fresh = bits & ~into[w];
      if (fresh !== 0) {
        into[w] |= fresh;
        added += popcount(fresh);
      }
    }
    return added;
  }

  /** Reads chunk `i` into `into` (1 MiB). */
  readChunk(i: number, into: Uint8Array): void {
    this.#checkChunk(i, into.length);
    this.#file.seekSync(i * DISK_CHUNK, Deno.SeekMode.Start);
    let off = 0;
    while (off < into.length) {
      const n = this.#file.readSync(into.subarray(off));
      if (n === null) throw new DiskError(`Disk image ${this.path} ended inside chunk ${i}`);
      off += n;
    }
  }

  /**
   * True when chunk `i` is known to read as zeroes without reading it: this process
   * created the image (all holes) and nothing has written the chunk since.
   */
  knownZero(i: number): boolean {
    return this.#createdEmpty && (Atomics.load(this.written, i >>> 5) & (1 << (i & 31))) === 0;
  }

  /** Writes chunk `i` (1 MiB) and records it as written since the base. */
  writeChunk(i: number, data: Uint8Array): void {
    this.#checkChunk(i, data.length);
    this.#file.seekSync(i * DISK_CHUNK, Deno.SeekMode.Start);
    let off = 0;
    while (off < data.length) off += this.#file.writeSync(data.subarray(off));
    Atomics.or(this.written, i >>> 5, 1 << (i & 31));
  }

  /** Writes the sidecar bitmap. */
  persist(): void {
    if (this.#closed) return;
    const bytes = new Uint8Array(this.written.buffer).slice(0, Math.ceil(this.chunks / 8));
    Deno.writeFileSync(sidecarPath(this.path), bytes);
  }

  /** SHA-256 of the whole image, read through its own handle. */
  async digest(): Promise<DiskDigest> {
    const hash = createHash("sha256");
    using file = await Deno.open(this.path, { read: true });
    const buf = new Uint8Array(4 * DISK_CHUNK);
    let left = this.size;
    while (left > 0) {
      const n = await file.read(buf.subarray(0, Math.min(buf.length, left)));
      if (n === null) break;
      hash.update(buf.subarray(0, n));
      left -= n;
    }
    return {
      device: this.name,
      size: this.size,
      sha256: hash.digest("hex"),
      incomplete: this.incomplete,
    };
  }

  /** Persists the sidecar and closes the image. Idempotent. */
  close(): void {
    if (this.#closed) return;
    try {
      this.persist();
    } finally {
      this.#closed = true;
      this.#file.close();
    }
  }

  #loadSidecar(imageExisted: boolean): void {
    const path = sidecarPath(this.path);
    const want = Math.ceil(this.chunks / 8);
    if (imageExisted && exists(path)) {
      const bytes = Deno.readFileSync(path);
      if (bytes.length !== want) {
        throw new DiskError(
          `Sidecar ${path} has ${bytes.length} bytes, expected ${want} for ${this.chunks} chunks`,
        );
      }
      new Uint8Array(this.written.buffer).set(bytes);
    } else {
      this.persist();
    }
  }

  #checkChunk(i: number, length: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.chunks) {
      throw new DiskError(`Chunk ${i} lies beyond the ${this.size}-byte image`);
    }
    if (length !== DISK_CHUNK) {
      throw new DiskError(`Chunk of ${length} bytes, expected ${DISK_CHUNK}`);
    }
  }
}

function checkSize(size: number, what: string): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % DISK_CHUNK !== 0) {
    throw new DiskError(`Invalid ${what}: must be a positive multiple of 1 MiB`);
  }
  if (size > MAX_DISK_SIZE) throw new DiskError(`Invalid ${what}: at most 1T`);
}

function popcount(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}
