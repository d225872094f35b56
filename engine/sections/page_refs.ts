/**
 * Same-page references on the source (docs/ARCHITECTURE.md, "Same-page
 * references"): for one RAM block, which pages the destination holds with the
 * content they were last sent with, indexed by that content's digest, and which
 * pages were sent as references to them.
 *
 * A page P may be the target of a reference only while the destination is known to
 * hold at P exactly what P's last record carried: P's last record carried data
 * (PAGE or a compressed run), and P has not been dirtied since. The saver checks
 * the second part against its migration bitmap and the guest's unsynced log, and
 * compares the bytes of the two pages before it sends a reference; the index only
 * proposes candidates.
 *
 * One race remains: a guest thread writes a page before it sets the page's dirty
 * bit, so a reference may copy a P that was rewritten just before it. Every page
 * sent as a reference is remembered with its target until the target is dirtied
 * again; the sync that finds the target dirty marks its referrers dirty too, so
 * they go again (the final sync runs with the guest stopped, so none is missed).
 * @module
 */

/** Slots probed per lookup or insert: the index is bounded in size and time. */
const PROBES = 8;

/** The index of one block's pages by content digest, and the references sent to them. */
export class PageRefs {
  /** Page + 1 per slot (0: empty); slots are looked up by digest. */
  readonly #slots: Int32Array;
  /** The digest each slot's page was inserted under. */
  readonly #digests: Uint32Array;
  readonly #mask: number;
  /** One bit per page: its last record carried data, so it may be a reference's target. */
  readonly #eligible: Uint32Array;
  /** Target page → the pages sent as references to its current content. */
  readonly #referrers = new Map<number, number[]>();

  constructor(readonly pages: number) {
    let size = 16;
    while (size < pages * 2) size *= 2;
    this.#slots = new Int32Array(size);
    this.#digests = new Uint32Array(size);
    this.#mask = size - 1;
    this.#eligible = new Uint32Array(Math.ceil(pages / 32));
  }

  /** Bytes the index holds (for the memory overhead). */
  get bytes(): number {
    return this.#slots.byteLength + this.#digests.byteLength + this.#eligible.byteLength;
  }

  /** Targets that referrers are remembered for. */
  get targets(): number {
    return this.#referrers.size;
  }

  #start(digest: number): number {
    return Math.imul(digest, 0x9e3779b1) >>> 0 & this.#mask;
  }

  /**
   * A page that went out with data under `digest` and may be referenced (its last
   * record carried data), or -1. The caller must still check that it is clean and
   * holds the same bytes.
   */
  candidate(digest: number): number {
    let slot = this.#start(digest);
    for (let i = 0; i < PROBES; i++, slot = (slot + 1) & this.#mask) {
      const entry = this.#slots[slot];
      if (entry === 0) return -1;
      if (this.#digests[slot] === digest && this.isEligible(entry - 1)) return entry - 1;
    }
    return -1;
  }

  /** True when the last record of `page` carried data. */
  isEligible(page: number): boolean {
    return (this.#eligible[page >>> 5] & (1 << (page & 31))) !== 0;
  }

  /** `page` went out with data whose digest is `digest`: it may be referenced from now on. */
  sentData(page: number, digest: number): void {
    this.#eligible[page >>> 5] |= 1 << (page & 31);
    let slot = this.#start(digest);
    let victim = slot;
    for (let i = 0; i < PROBES; i++, slot = (slot + 1) & this.#mask) {
      const entry = this.#slots[slot];
      if (entry === 0 || (this.#digests[slot] === digest)) {
        victim = slot;
        break;
      }
      // Prefer replacing an entry that can no longer be a target.
      if (!this.isEligible(entry - 1) || entry - 1 === page) victim = slot;
    }
    this.#slots[victim] = page + 1;
    this.#digests[victim] = digest;
  }

  /** `page` went out without data (ZERO, or a reference): it is no target any more. */
  sentOther(page: number): void {
    this.#eligible[page >>> 5] &= ~(1 << (page & 31));
  }

  /** The 32 pages of bitmap word `word` went out as ZERO records. */
  sentOtherWord(word: number): void {
    this.#eligible[word] = 0;
  }

  /** `page` went out as a reference to `target`. */
  referenced(page: number, target: number): void {
    const list = this.#referrers.get(target);
    if (list) list.push(page);
    else this.#referrers.set(target, [page]);
  }

  /**
   * After a sync: every target now dirty in `bitmap` (the migration bitmap) has its
   * referrers marked dirty there too. Returns how many pages that newly marked.
   */
  redirtyReferrers(bitmap: Uint32Array): number {
    let added = 0;
    for (const [target, pages] of this.#referrers) {
      if ((bitmap[target >>> 5] & (1 << (target & 31))) === 0) continue;
      for (const page of pages) {
        const bit = 1 << (page & 31);
        if ((bitmap[page >>> 5] & bit) === 0) {
          bitmap[page >>> 5] |= bit;
          added++;
        }
      }
      this.#referrers.delete(target);
    }
    return added;
  }
}
