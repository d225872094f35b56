/**
 * A serial console's recent output: the last {@link ConsoleBuffer.capacity} bytes,
 * the running count of every byte it has seen (so a reader can tell what it
 * missed), and listeners that see each new chunk as it arrives.
 * @module
 */

/** Listener of new console output: the bytes and the offset of their first byte. */
export type ConsoleListener = (bytes: Uint8Array, offset: number) => void;

/** The last `capacity` bytes of console output, with listeners. */
export class ConsoleBuffer {
  readonly #bytes: Uint8Array;
  #length = 0;
  #total = 0;
  readonly #listeners = new Set<ConsoleListener>();

  constructor(readonly capacity: number = 64 * 1024) {
    if (!Number.isInteger(capacity) || capacity <= 0) {
      throw new RangeError(`console buffer capacity ${capacity}: expected a positive integer`);
    }
    this.#bytes = new Uint8Array(capacity);
  }

  /** Bytes of output ever seen, history carried over by {@link restore} included. */
  get total(): number {
    return this.#total;
  }

  /** Adds output and tells every listener. */
  append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const offset = this.#total;
    this.#keep(bytes);
    this.#total += bytes.length;
    for (const listener of [...this.#listeners]) {
      try {
        listener(bytes, offset);
      } catch (error) {
        console.error("Console listener failed:", error);
      }
    }
  }

  /** The last `max` bytes kept (all of them by default), oldest first, with the offset of the first. */
  tail(max: number = this.capacity): { bytes: Uint8Array; offset: number } {
    const n = Math.max(0, Math.min(max, this.#length));
    return {
      bytes: this.#bytes.slice(this.#length - n, this.#length),
      offset: this.#total - n,
    };
  }

  /**
   * Puts history from another console (a migration's source) before what this one
   * holds, as if it had been printed here first: `offset` is the source's offset of
   * its first byte, so offsets carry on across a migration.
   */
  restore(history: Uint8Array, offset: number): void {
    const own = this.#bytes.slice(0, this.#length);
    this.#length = 0;
    this.#keep(history);
    this.#keep(own);
    this.#total = offset + history.length + own.length;
  }

  /** Calls `listener` with every later chunk; returns the unsubscribe function. */
  subscribe(listener: ConsoleListener): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  #keep(bytes: Uint8Array): void {
    const cap = this.capacity;
    if (bytes.length >= cap) {
      this.#bytes.set(bytes.subarray(bytes.length - cap));
      this.#length = cap;
      return;
    }
    const drop = Math.max(0, this.#length + bytes.length - cap);
    if (drop > 0) {
      this.#bytes.copyWithin(0, drop, this.#length);
      this.#length -= drop;
    }
    this.#bytes.set(bytes, this.#length);
    this.#length += bytes.length;
  }
}
