import { PAGE_SIZE } from "../format/constants.ts";
import {
  createKernels,
  type KernelKind,
  type Kernels,
  selectedKernelKind,
} from "../wasm/kernels.ts";

/** Syncs a cached page stays protected from replacement by another page (QEMU's CACHED_PAGE_LIFETIME). */
export const CACHED_PAGE_LIFETIME = 2;

/**
 * XBZRLE's page cache (QEMU's page_cache.c): a direct-mapped cache of page copies
 * keyed by a page's global index. The slot count is the largest power of two that
 * fits `sizeBytes`; a slot holding a page cached in the last CACHED_PAGE_LIFETIME
 * syncs is not taken by another page. All memory is allocated at construction.
 *
 * The pages live in the arena of the cache's own kernel set (`kernels`), next to
 * a snapshot page (`scratch`): with the WebAssembly kernels, encoding a snapshot
 * against a cached page then copies nothing in.
 */
export class PageCache {
  readonly #data: Uint8Array;
  readonly #keys: Float64Array;
  readonly #ages: Uint32Array;
  readonly #mask: number;
  readonly #kind: KernelKind;
  readonly sizeBytes: number;
  /** The kernels whose memory holds the pages; use them to encode against a cached page. */
  readonly kernels: Kernels;

  /** A cache of (at most) `sizeBytes`, its kernels of `kind` (default: the selected kind). */
  constructor(sizeBytes: number, kind: KernelKind = selectedKernelKind()) {
    const slots = 2 ** Math.floor(Math.log2(Math.max(1, Math.floor(sizeBytes / PAGE_SIZE))));
    this.#mask = slots - 1;
    this.sizeBytes = slots * PAGE_SIZE;
    this.#kind = kind;
    this.kernels = createKernels({ kind, arenaBytes: this.sizeBytes });
    this.#data = this.kernels.arena;
    this.#keys = new Float64Array(slots).fill(-1);
    this.#ages = new Uint32Array(slots);
  }

  /** Number of page slots. */
  get slots(): number {
    return this.#mask + 1;
  }

  /** A page of working memory next to the cached pages (the saver's snapshot). */
  get scratch(): Uint8Array {
    return this.kernels.scratch;
  }

  /** The cached copy of page `key`, or null when that page is not cached. */
  lookup(key: number): Uint8Array | null {
    const slot = key & this.#mask;
    if (this.#keys[slot] !== key) return null;
    const off = slot * PAGE_SIZE;
    return this.#data.subarray(off, off + PAGE_SIZE);
  }

  /**
   * Stores a copy of `page` for `key` at sync count `age`. Returns false (and
   * stores nothing) when the slot holds another page cached recently.
   */
  insert(key: number, page: Uint8Array, age: number): boolean {
    const slot = key & this.#mask;
    const held = this.#keys[slot];
    if (held !== -1 && held !== key && this.#ages[slot] + CACHED_PAGE_LIFETIME > age) return false;
    this.#keys[slot] = key;
    this.#ages[slot] = age;
    this.#data.set(page, slot * PAGE_SIZE);
    return true;
  }

  /** A new cache of `sizeBytes` holding as many of this cache's pages as map to free slots. */
  resized(sizeBytes: number): PageCache {
    const next = new PageCache(sizeBytes, this.#kind);
    for (let slot = 0; slot <= this.#mask; slot++) {
      const key = this.#keys[slot];
      if (key === -1) continue;
      const off = slot * PAGE_SIZE;
      next.insert(key, this.#data.subarray(off, off + PAGE_SIZE), this.#ages[slot]);
    }
    return next;
  }
}
