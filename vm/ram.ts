/** Target page size, as QEMU's TARGET_PAGE_SIZE on x86. */
export const PAGE_SIZE = 4096;
/** log2(PAGE_SIZE). */
export const PAGE_SHIFT = 12;

/** Thrown when a RAM block cannot be created or addressed. */
export class RamError extends Error {
  override readonly name = "RamError";
}

/**
 * One named region of guest RAM held in a SharedArrayBuffer, with the dirty log a
 * vCPU worker writes (one bit per page, set with Atomics.or after the page was
 * written) and a "touched" map: a page whose touched bit is clear is known to be
 * all zeroes, so the migration can send it as a zero page without scanning it.
 */
export class RamBlock {
  /** The guest's bytes. */
  readonly bytes: Uint8Array;
  /** The same bytes as 32-bit words, for fast zero-page checks. */
  readonly words: Int32Array;
  /** Dirty log, one bit per page, shared with the vCPU worker. */
  readonly dirty: Uint32Array;
  /** Pages that may hold non-zero bytes (conservative: set bits may be zero pages). */
  readonly touched: Uint32Array;
  /** Number of pages. */
  readonly pages: number;
  /**
   * The shared WebAssembly memory that holds `bytes` (up to 4 GiB), so kernels can
   * move pages in and out of it directly; null for a block rebuilt from another's
   * buffers (a worker's view) or one too large.
   */
  readonly memory: WebAssembly.Memory | null;
  #refresh: (() => void) | null = null;
  /**
   * Pages an incoming stream changed since {@link takeWritten} last took them, one bit
   * per page; null until {@link trackWrites} (only a guest whose RAM lives elsewhere
   * asks for it, to copy received pages over during pre-copy). Main thread only.
   */
  written: Uint32Array<ArrayBuffer> | null = null;

  constructor(readonly name: string, readonly length: number, shared?: RamBlockShared) {
    if (name.length === 0 || name.length > 255) {
      throw new RamError(`Cannot create RAM block "${name}": name must be 1-255 bytes`);
    }
    if (!Number.isSafeInteger(length) || length <= 0 || length % PAGE_SIZE !== 0) {
      throw new RamError(
        `Cannot create RAM block "${name}": length ${length} is not a positive multiple of ${PAGE_SIZE}`,
      );
    }
    this.pages = length / PAGE_SIZE;
    const words = Math.ceil(this.pages / 32);
    if (
      shared &&
      (shared.length !== length || shared.ram.byteLength < length ||
        shared.dirty.byteLength !== words * 4 ||
        shared.touched.byteLength !== words * 4)
    ) {
      throw new RamError(
        `Cannot create RAM block "${name}": shared buffers do not match length ${length}`,
      );
    }
    this.memory = shared ? null : sharedMemory(length);
    const ram = shared?.ram ?? (this.memory?.buffer as SharedArrayBuffer | undefined) ??
      new SharedArrayBuffer(length);
    this.bytes = new Uint8Array(ram, 0, length);
    this.words = new Int32Array(ram, 0, length >> 2);
    this.dirty = new Uint32Array(shared?.dirty ?? new SharedArrayBuffer(words * 4));
    this.touched = new Uint32Array(shared?.touched ?? new SharedArrayBuffer(words * 4));
  }

  /** The shared buffers, to hand to a worker that rebuilds the block on its side. */
  get shared(): RamBlockShared {
    return {
      length: this.length,
      ram: this.bytes.buffer as SharedArrayBuffer,
      dirty: this.dirty.buffer as SharedArrayBuffer,
      touched: this.touched.buffer as SharedArrayBuffer,
    };
  }

  /**
   * For a guest whose RAM lives elsewhere (the x86 guest's emulator memory): the
   * function that copies the pages changed there into `bytes` and sets their dirty
   * bits. {@link refresh} and {@link syncDirty} call it; null removes it.
   */
  setRefresh(refresh: (() => void) | null): void {
    this.#refresh = refresh;
  }

  /** Brings `bytes` and the dirty log up to date with the guest (a no-op where the guest writes `bytes` itself). */
  refresh(): void {
    this.#refresh?.();
  }

  /**
   * Moves the dirty log into `into` (OR) and clears it, word by word with
   * Atomics.exchange so no bit set concurrently is lost; also records the pages in
   * the touched map. Returns how many bits were newly set in `into`.
   */
  syncDirty(into: Uint32Array): number {
    this.#refresh?.();
    const dirty = this.dirty;
    const touched = this.touched;
    let added = 0;
    for (let w = 0; w < dirty.length; w++) {
      if (dirty[w] === 0) continue;
      const bits = Atomics.exchange(dirty, w, 0);
      if (bits === 0) continue;
      touched[w] |= bits;
      const fresh = bits & ~into[w];
      if (fresh !== 0) {
        into[w] |= fresh;
        added += popcount32(fresh);
      }
    }
    return added;
  }

  /** Starts recording the pages a loader changes in {@link written}. */
  trackWrites(): void {
    this.written ??= new Uint32Array(this.dirty.length);
  }

  /**
   * The pages written since the last call (a copy of {@link written}, which is
   * cleared), or null when there are none or writes are not tracked.
   */
  takeWritten(): Uint32Array<ArrayBuffer> | null {
    const written = this.written;
    if (written === null) return null;
    let any = false;
    for (let w = 0; w < written.length; w++) {
      if (written[w] !== 0) {
        any = true;
        break;
      }
    }
    if (!any) return null;
    const taken = written.slice();
    written.fill(0);
    return taken;
  }

  /** Marks a page dirty, as a guest write would (for loaders and tests on the main thread). */
  markDirty(page: number): void {
    Atomics.or(this.dirty, page >>> 5, 1 << (page & 31));
  }

  /**
   * Records that a page may now hold non-zero bytes, having just been written (in
   * {@link written} too, when writes are tracked).
   */
  markTouched(page: number): void {
    const bit = 1 << (page & 31);
    this.touched[page >>> 5] |= bit;
    if (this.written !== null) this.written[page >>> 5] |= bit;
  }

  /** Records in {@link written}, when tracked, that a page was written (e.g. zeroed). */
  markWritten(page: number): void {
    if (this.written !== null) this.written[page >>> 5] |= 1 << (page & 31);
  }

  /** True when the page may hold non-zero bytes. */
  isTouched(page: number): boolean {
    return (this.touched[page >>> 5] & (1 << (page & 31))) !== 0;
  }

  /** Marks every page touched (after filling RAM with data). */
  touchAll(): void {
    this.touched.fill(0xffffffff);
  }

  /** Writes one byte of every page so the host has faulted all of RAM in (like -mem-prealloc). */
  prefault(): void {
    const bytes = this.bytes;
    for (let off = 0; off < this.length; off += PAGE_SIZE) bytes[off] |= 0;
  }
}

/** Largest block held in a WebAssembly memory: 65536 pages of 64 KiB. */
const MAX_WASM_MEMORY = 2 ** 32;

/**
 * A shared WebAssembly memory of at least `length` bytes (its buffer is a
 * SharedArrayBuffer workers can use as any other), or null when too large or
 * the engine has no shared memories.
 */
function sharedMemory(length: number): WebAssembly.Memory | null {
  if (length > MAX_WASM_MEMORY || typeof WebAssembly !== "object") return null;
  const pages = Math.ceil(length / 65536);
  try {
    return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  } catch {
    return null;
  }
}

/** The SharedArrayBuffers behind a RamBlock (`ram` may be longer than the block: a WebAssembly memory's whole buffer). */
export interface RamBlockShared {
  length: number;
  ram: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
  touched: SharedArrayBuffer;
}

/** Number of set bits in a 32-bit word. */
export function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** A bitmap with every page of a block set: the migration's starting point. */
export function fullBitmap(pages: number): Uint32Array {
  const map = new Uint32Array(Math.ceil(pages / 32)).fill(0xffffffff);
  const tail = pages & 31;
  if (tail !== 0) map[map.length - 1] = (1 << tail) - 1 >>> 0;
  return map;
}

/** True when the page starting at 32-bit word `first` of `words` is all zeroes. */
export function isZeroPage(words: Int32Array, first: number): boolean {
  if (words[first] !== 0 || words[first + 1023] !== 0) return false;
  const end = first + 1024;
  for (let i = first; i < end; i += 8) {
    if (
      (words[i] | words[i + 1] | words[i + 2] | words[i + 3] | words[i + 4] | words[i + 5] |
        words[i + 6] | words[i + 7]) !== 0
    ) return false;
  }
  return true;
}

/** True when the pages at word offsets `a` and `b` of `words` hold the same bytes. */
export function isSamePage(words: Int32Array, a: number, b: number): boolean {
  for (let i = 0; i < PAGE_SIZE / 4; i++) if (words[a + i] !== words[b + i]) return false;
  return true;
}

/** Parses a size like `256M`, `1G`, `4096`, `64K` (binary units) into bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?$/i.exec(text.trim());
  if (!m) {
    throw new RamError(
      `Invalid size "${text}": expected a number with an optional K, M, G or T suffix`,
    );
  }
  const unit = { "": 1, K: 1 << 10, M: 1 << 20, G: 1 << 30, T: 2 ** 40 }[
    (m[2] ?? "").toUpperCase() as "" | "K" | "M" | "G" | "T"
  ];
  const value = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(value)) throw new RamError(`Invalid size "${text}": too large`);
  return value;
}
