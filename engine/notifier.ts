/** A listener sees every event emitted after it subscribed. */
export type Listener<E> = (event: E) => void;

/** How many recent events a Notifier keeps for replay by default. */
export const DEFAULT_HISTORY = 1024;

/**
 * A first event id for a process starting at `nowMs`: 100 ids per ms of wall
 * clock, so a restarted process starts above every id its predecessor used unless
 * that one averaged over 100 events per ms (ferry coalesces progress to ~10 a
 * second). 15 digits until the year 2286.
 */
export function bootEventId(nowMs: number): number {
  return Math.floor(nowMs) * 100;
}

/**
 * A small synchronous event hub (QEMU's migration notifiers). Every event gets an
 * increasing `id`; a listener that throws is isolated from the others. The last
 * `history` events are kept in a ring so a client that reconnects can be sent what
 * it missed (SSE's Last-Event-ID).
 */
export class Notifier<E extends object> {
  #listeners = new Set<Listener<E & { id: number }>>();
  #nextId = 1;
  readonly #ring: (E & { id: number })[];
  /** Index in #ring of the slot the next event goes to. */
  #head = 0;
  #count = 0;

  /**
   * `firstId` is the id of the first event. A long-lived service seeds it from the
   * wall clock ({@link bootEventId}) so that ids never repeat across restarts: a
   * client reconnecting with an id from before a restart then gets a reset rather
   * than somebody else's events under familiar ids.
   */
  constructor(history = DEFAULT_HISTORY, firstId = 1) {
    if (!Number.isInteger(history) || history < 0) throw new RangeError("bad history size");
    if (!Number.isSafeInteger(firstId) || firstId < 1) throw new RangeError("bad first id");
    this.#ring = new Array(history);
    this.#nextId = firstId;
  }

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

  /** Id of the last event emitted (0 before any). */
  get lastId(): number {
    return this.#nextId - 1;
  }

  /** How many past events are kept for {@link since}. */
  get historySize(): number {
    return this.#ring.length;
  }

  /**
   * The kept events with an id above `id`, oldest first; `null` when some of them
   * are no longer kept (or `id` is from the future), so the caller must re-fetch
   * the state instead of replaying.
   */
  since(id: number): (E & { id: number })[] | null {
    if (!Number.isInteger(id) || id < 0 || id > this.lastId) return null;
    const missed = this.lastId - id;
    if (missed > this.#count) return null;
    const out: (E & { id: number })[] = [];
    const cap = this.#ring.length;
    for (let i = missed; i > 0; i--) out.push(this.#ring[(this.#head - i + cap) % cap]);
    return out;
  }

  /** Stamps the event with the next id, keeps it, and delivers it to every listener. */
  emit(event: E): E & { id: number } {
    const stamped = { ...event, id: this.#nextId++ };
    const cap = this.#ring.length;
    if (cap > 0) {
      this.#ring[this.#head] = stamped;
      this.#head = (this.#head + 1) % cap;
      if (this.#count < cap) this.#count++;
    }
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
