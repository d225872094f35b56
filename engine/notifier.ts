/** A listener sees every event emitted after it subscribed. */
export type Listener<E> = (event: E) => void;

/**
 * A small synchronous event hub (QEMU's migration notifiers). Every event gets an
 * increasing `id`; a listener that throws is isolated from the others.
 */
export class Notifier<E extends object> {
  #listeners = new Set<Listener<E & { id: number }>>();
  #nextId = 1;

  /** Registers a listener; returns the function that removes it. */
  subscribe(listener: Listener<E & { id: number }>): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Number of current listeners. */
  get size(): number {
    return this.#listeners.size;
  }

  /** Id the next event will get. */
  get nextId(): number {
    return this.#nextId;
  }

  /** Stamps the event with the next id and delivers it to every listener. */
  emit(event: E): E & { id: number } {
    const stamped = { ...event, id: this.#nextId++ };
    for (const listener of this.#listeners) {
      try {
        listener(stamped);
      } catch (e) {
        console.error("ferry: event listener failed:", e);
      }
    }
    return stamped;
  }
}
