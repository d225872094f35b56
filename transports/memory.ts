import { type Channel, type Listener, TransportError, type Transports } from "./transport.ts";
import { parseUri, type UriDirection } from "./uri.ts";
import { SerialWrites } from "./serial_writes.ts";

/** Default buffer of an in-memory channel direction: 1 MiB unread before writes wait. */
export const DEFAULT_MEMORY_CAPACITY = 1 << 20;

/** One direction of a pair: the bytes written and not yet read, plus its end state. */
class Pipe {
  readonly chunks: Uint8Array[] = [];
  /** Read position inside `chunks[0]`. */
  head = 0;
  /** Bytes written and not yet read. */
  buffered = 0;
  /** The writer finished or closed: the reader gets EOF once `buffered` is 0. */
  ended = false;
  /** The reader closed: further writes reject, buffered bytes are dropped. */
  readerGone = false;
  #waiters: (() => void)[] = [];

  /** Resolves at the next state change of this pipe (data, drain, end, close, failure). */
  changed(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.wake();
  }

  /** Moves up to `buf.length` buffered bytes into `buf`; returns how many. */
  take(buf: Uint8Array): number {
    let n = 0;
    while (n < buf.length && this.chunks.length > 0) {
      const chunk = this.chunks[0];
      const count = Math.min(buf.length - n, chunk.length - this.head);
      buf.set(chunk.subarray(this.head, this.head + count), n);
      n += count;
      this.head += count;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.buffered -= n;
    if (n > 0) this.wake();
    return n;
  }

  drop(): void {
    this.chunks.length = 0;
    this.head = 0;
    this.buffered = 0;
  }
}

/** What both ends of a pair share: an injected failure fails both at once. */
class PairState {
  failure: Error | undefined;
}

/**
 * One end of an in-process channel pair (see {@link channelPair}). Behaves like a
 * socket with a `capacity`-byte buffer per direction; tests use {@link fail} to
 * inject a transport failure and {@link buffered} to watch backpressure.
 */
export class MemoryChannel implements Channel {
  readonly #inbound: Pipe;
  readonly #outbound: Pipe;
  readonly #pair: PairState;
  readonly #capacity: number;
  #closed = false;
  /** Queued writes, one at a time. */
  readonly #writes = new SerialWrites();
  /** The error of a failed write, rethrown by finish() (the stream did not get through). */
  #writeFailure: Error | undefined;

  /** Use {@link channelPair}; the constructor only wires one end to its pipes. */
  constructor(
    readonly peer: string,
    inbound: Pipe,
    outbound: Pipe,
    pair: PairState,
    capacity: number,
  ) {
    this.#inbound = inbound;
    this.#outbound = outbound;
    this.#pair = pair;
    this.#capacity = capacity;
  }

  /** True once close() or finish() ran on this end, or the pair failed. */
  get closed(): boolean {
    return this.#closed || this.#pair.failure !== undefined;
  }

  /** Bytes this end wrote that the other end has not read yet. */
  get buffered(): number {
    return this.#outbound.buffered;
  }

  /**
   * Queues a copy of `chunk` for the other end, then waits while more than
   * `capacity` bytes are unread (backpressure). Writes are serialised. Rejects if
   * this end is closed, the other end closed, or the pair failed.
   */
  write(chunk: Uint8Array): Promise<void> {
    return this.#writes.run(() => this.#write(chunk));
  }

  async #write(chunk: Uint8Array): Promise<void> {
    try {
      await this.#writeAll(chunk);
    } catch (err) {
      this.#writeFailure ??= err as Error;
      throw err;
    }
  }

  async #writeAll(chunk: Uint8Array): Promise<void> {
    this.#checkWritable();
    if (chunk.length > 0) this.#outbound.push(chunk.slice());
    while (this.#outbound.buffered > this.#capacity) {
      await this.#outbound.changed();
      this.#checkWritable();
    }
  }

  /** Reads up to `buf.length` bytes, waiting for data; `null` once the other end finished. */
  async read(buf: Uint8Array): Promise<number | null> {
    for (;;) {
      this.#checkOpen("read from");
      if (buf.length === 0) return 0;
      if (this.#inbound.buffered > 0) return this.#inbound.take(buf);
      if (this.#inbound.ended) return null;
      await this.#inbound.changed();
    }
  }

  /**
   * Waits for queued writes to be buffered, signals EOF to the other end, then
   * closes. Rejects if this end was closed, the pair failed, or a write failed.
   */
  async finish(): Promise<void> {
    this.#checkOpen("finish");
    await this.#writes.idle;
    this.#checkOpen("finish");
    this.close();
    if (this.#writeFailure) throw this.#writeFailure;
  }

  /**
   * Closes this end: its pending reads and writes reject, the other end reads
   * what is still buffered and then EOF, and its writes reject. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#outbound.ended = true;
    this.#inbound.readerGone = true;
    this.#inbound.drop();
    this.#outbound.wake();
    this.#inbound.wake();
  }

  /**
   * Injects a transport failure (like a reset connection): every pending and later
   * read or write on both ends rejects with `error`, and both ends report closed.
   */
  fail(error: Error = new Error(`Memory channel to ${this.peer} failed (injected)`)): void {
    if (this.#pair.failure) return;
    this.#pair.failure = error;
    this.#outbound.wake();
    this.#inbound.wake();
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #checkOpen(what: string): void {
    if (this.#pair.failure) throw this.#pair.failure;
    if (this.#closed) throw new Error(`Cannot ${what} ${this.peer}: the channel is closed`);
  }

  #checkWritable(): void {
    this.#checkOpen("write to");
    if (this.#outbound.readerGone) {
      throw new Error(`Cannot write to ${this.peer}: the peer closed the channel`);
    }
  }
}

/**
 * Creates two connected in-process channels: bytes written to one are read from
 * the other, with real backpressure (a write waits while more than `capacity`
 * bytes are unread). For engine tests that need a stream but no sockets.
 * `peers` names each end's peer (what `peer` reports on the first and second).
 */
export function channelPair(
  capacity: number = DEFAULT_MEMORY_CAPACITY,
  peers: readonly [string, string] = ["memory:b", "memory:a"],
): [MemoryChannel, MemoryChannel] {
  if (!(Number.isSafeInteger(capacity) && capacity >= 0)) {
    throw new RangeError(`channelPair capacity must be a whole number of bytes, got ${capacity}`);
  }
  const aToB = new Pipe();
  const bToA = new Pipe();
  const pair = new PairState();
  const a = new MemoryChannel(peers[0], bToA, aToB, pair, capacity);
  const b = new MemoryChannel(peers[1], aToB, bToA, pair, capacity);
  return [a, b];
}

/** A listener registered on a {@link MemoryTransports}; accepts pairs made by connect(). */
export class MemoryListener implements Listener {
  /** Socket peers: any number may connect. */
  readonly peers = "many" as const;
  readonly #pending: MemoryChannel[] = [];
  readonly #waiters: { resolve: (c: MemoryChannel) => void; reject: (e: Error) => void }[] = [];
  readonly #onClose: () => void;
  #closed = false;

  /** Made by {@link MemoryTransports.listen}; `address` is the URI exactly as given. */
  constructor(readonly address: string, onClose: () => void) {
    this.#onClose = onClose;
  }

  /** True once close() ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Resolves with the server end of the next connect(); rejects once closed. */
  accept(): Promise<MemoryChannel> {
    if (this.#closed) return Promise.reject(new Error(`Listener ${this.address} is closed`));
    const next = this.#pending.shift();
    if (next) return Promise.resolve(next);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Stops listening: pending accepts reject, connections never accepted are closed. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onClose();
    for (const w of this.#waiters.splice(0)) {
      w.reject(new Error(`Listener ${this.address} is closed`));
    }
    for (const c of this.#pending.splice(0)) c.close();
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal Hands a new server end to the next accept(). */
  deliver(channel: MemoryChannel): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(channel);
    else this.#pending.push(channel);
  }
}

/**
 * A {@link Transports} without sockets: `connect(uri)` pairs with an earlier
 * `listen(uri)` on the same object (same URI string) through a
 * {@link channelPair}. URIs are still validated with parseUri, so bad ones fail
 * exactly as they would for real.
 */
export class MemoryTransports implements Transports {
  readonly #listeners = new Map<string, MemoryListener>();
  readonly #capacity: number;
  #count = 0;

  /** `capacity` is the per-direction buffer of each pair (default 1 MiB). */
  constructor(options: { capacity?: number } = {}) {
    this.#capacity = options.capacity ?? DEFAULT_MEMORY_CAPACITY;
  }

  /** Checks that `uri` parses for `direction` (any scheme is accepted, none is opened). */
  validate(uri: string, direction?: UriDirection): void {
    parseUri(uri, direction);
  }

  /**
   * Connects to the listener registered under `uri`, resolving with the client
   * end; `connect-failed` ("connection refused") when nobody listens there.
   */
  connect(uri: string, signal?: AbortSignal): Promise<MemoryChannel> {
    try {
      parseUri(uri);
      signal?.throwIfAborted();
      const listener = this.#listeners.get(uri);
      if (!listener) {
        throw new TransportError(
          "connect-failed",
          `Cannot connect to ${uri}: connection refused (no memory listener on it)`,
        );
      }
      const n = ++this.#count;
      const [client, server] = channelPair(this.#capacity, [uri, `memory:client-${n}`]);
      listener.deliver(server);
      return Promise.resolve(client);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Registers a listener under `uri`; `listen-failed` if one is already there. */
  listen(uri: string): Promise<MemoryListener> {
    try {
      parseUri(uri);
      if (this.#listeners.has(uri)) {
        throw new TransportError(
          "listen-failed",
          `Cannot listen on ${uri}: address already in use`,
        );
      }
      const listener: MemoryListener = new MemoryListener(
        uri,
        () => this.#listeners.delete(uri),
      );
      this.#listeners.set(uri, listener);
      return Promise.resolve(listener);
    } catch (err) {
      return Promise.reject(err);
    }
  }
}
