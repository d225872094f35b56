import { PAGE_SIZE } from "../vm/ram.ts";

/** Syncs a cached page stays protected from replacement by another page (QEMU's CACHED_PAGE_LIFETIME). */
export const CACHED_PAGE_LIFETIME = 2;

/**
 * XBZRLE's page cache (QEMU's page_cache.c): a direct-mapped cache of page copies
 * keyed by a page's global index. The slot count is the largest power of two that
 * fits `sizeBytes`; a slot holding a page cached in the last CACHED_PAGE_LIFETIME
 * syncs is not taken by another page. All memory is allocated at construction.
 */
export class PageCache {
  readonly #data: Uint8Array;
  readonly #keys: Float64Array;
  readonly #ages: Uint32Array;
  readonly #mask: number;
  readonly sizeBytes: number;

  constructor(sizeBytes: number) {
    const slots = 2 ** Math.floor(Math.log2(Math.max(1, Math.floor(sizeBytes / PAGE_SIZE))));
    this.#mask = slots - 1;
    this.sizeBytes = slots * PAGE_SIZE;
    this.#data = new Uint8Array(this.sizeBytes);
    this.#keys = new Float64Array(slots).fill(-1);
    this.#ages = new Uint32Array(slots);
  }

  /** Number of page slots. */
  get slots(): number {
    return this.#mask + 1;
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
    const next = new PageCache(sizeBytes);
    for (let slot = 0; slot <= this.#mask; slot++) {
      const key = this.#keys[slot];
      if (key === -1) continue;
      const off = slot * PAGE_SIZE;
      next.insert(key, this.#data.subarray(off, off + PAGE_SIZE), this.#ages[slot]);
    }
    return next;
  }
}
