/**
 * Serialises a channel's writes: each starts once the one before it settled, so
 * concurrent writes are queued, never interleaved, and a failed one does not stop
 * the queue (each caller sees its own write's outcome).
 */
export class SerialWrites {
  #tail: Promise<unknown> = Promise.resolve();

  /** Runs `write` after every write queued before it; settles as `write` does. */
  run<T>(write: () => Promise<T>): Promise<T> {
    const done = this.#tail.then(write);
    this.#tail = done.catch(() => {});
    return done;
  }

  /** Resolves once every write queued so far has settled (never rejects). */
  get idle(): Promise<unknown> {
    return this.#tail;
  }
}
