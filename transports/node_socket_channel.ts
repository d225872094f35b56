/**
 * A one-direction {@link Channel} over an inherited socket descriptor, through
 * `node:net`'s `new Socket({ fd })` — the only way Deno 2 has to adopt a socket
 * it did not open (`/proc/self/fd/N` cannot be opened for a socket: ENXIO). The
 * channel owns the descriptor: close() closes it, so the peer sees the end.
 * @module
 */
import type { Socket } from "node:net";
import { describeNetError } from "./channel.ts";
import type { Channel } from "./transport.ts";
import { SerialWrites } from "./serial_writes.ts";

/** Bytes buffered from the socket before reading pauses (backpressure). */
const READ_HIGH_WATER = 8 << 20;

/** Reads and writes an inherited socket `fd` in one direction. */
export class NodeSocketChannel implements Channel {
  readonly #socket: Socket;
  readonly #direction: "read" | "write";
  readonly #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #closed = false;
  #failure: Error | undefined;
  #wake: (() => void) | null = null;
  /** Queued writes, one at a time. */
  readonly #writes = new SerialWrites();

  /**
   * Wraps `socket`, made with `new Socket({ fd, readable, writable, allowHalfOpen: true })`
   * for `direction` (node:net is loaded lazily by the caller: it costs ~0.2 s to
   * import); `peer` names it in errors ("fd:3").
   */
  constructor(socket: Socket, readonly peer: string, direction: "read" | "write") {
    this.#direction = direction;
    this.#socket = socket;
    this.#socket.on("error", (err: Error) => {
      this.#failure ??= new Error(`Cannot use ${peer}: ${describeNetError(err)}`, { cause: err });
      this.#notify();
    });
    this.#socket.on("close", () => this.#notify());
    if (direction === "read") {
      this.#socket.on("data", (chunk: Uint8Array) => {
        this.#chunks.push(chunk);
        this.#buffered += chunk.length;
        if (this.#buffered >= READ_HIGH_WATER) this.#socket.pause();
        this.#notify();
      });
      this.#socket.on("end", () => {
        this.#ended = true;
        this.#notify();
      });
    }
  }

  /** True once close() ran, finish() completed, or the socket failed. */
  get closed(): boolean {
    return this.#closed || this.#failure !== undefined;
  }

  /** Writes every byte of `chunk`, resolving once the socket took it; writes are queued. */
  write(chunk: Uint8Array): Promise<void> {
    return this.#writes.run(() => this.#write(chunk));
  }

  async #write(chunk: Uint8Array): Promise<void> {
    if (this.#direction !== "write") {
      throw new Error(`Cannot write to ${this.peer}: it is the incoming side`);
    }
    this.#check("write to");
    await this.#until((resolve, reject) => {
      this.#socket.write(chunk, (err?: Error | null) => {
        if (err) reject(this.#fail("write to", err));
        else resolve();
      });
    });
  }

  /** Reads up to `buf.length` bytes; `null` once the peer shut its side down. */
  async read(buf: Uint8Array): Promise<number | null> {
    if (this.#direction !== "read") {
      throw new Error(`Cannot read from ${this.peer}: it is the outgoing side`);
    }
    for (;;) {
      this.#check("read from");
      if (buf.length === 0) return 0;
      if (this.#chunks.length > 0) return this.#take(buf);
      if (this.#ended) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  #take(buf: Uint8Array): number {
    let n = 0;
    while (n < buf.length && this.#chunks.length > 0) {
      const chunk = this.#chunks[0];
      const k = Math.min(chunk.length, buf.length - n);
      buf.set(k === chunk.length ? chunk : chunk.subarray(0, k), n);
      n += k;
      if (k === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(k);
    }
    this.#buffered -= n;
    if (this.#buffered < READ_HIGH_WATER / 2 && this.#socket.isPaused()) this.#socket.resume();
    return n;
  }

  /** Waits for queued writes, shuts down the write side (the peer reads EOF), closes. */
  async finish(): Promise<void> {
    this.#check("finish");
    try {
      await this.#writes.idle;
      this.#check("finish");
      await this.#until((resolve) => this.#socket.end(() => resolve()));
      this.#check("finish");
    } finally {
      this.close();
    }
  }

  /** Destroys the socket (closing the descriptor); pending calls reject. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#socket.destroy();
    this.#notify();
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Runs a callback-style socket call, rejecting early if the channel closes or fails. */
  #until(start: (resolve: () => void, reject: (err: Error) => void) => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let done = false;
      const settle = (err?: Error) => {
        if (done) return;
        done = true;
        this.#socket.off("close", onClose);
        if (err) reject(err);
        else resolve();
      };
      const onClose = () => settle(this.#closedError("use"));
      this.#socket.on("close", onClose);
      start(() => settle(), (err) => settle(err));
    });
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #check(what: string): void {
    if (this.#failure || this.#closed) throw this.#closedError(what);
  }

  #closedError(what: string): Error {
    return this.#failure ?? new Error(`Cannot ${what} ${this.peer}: the channel is closed`);
  }

  #fail(what: string, err: Error): Error {
    if (this.#closed) return this.#closedError(what);
    this.#failure ??= new Error(`Cannot ${what} ${this.peer}: ${describeNetError(err)}`, {
      cause: err,
    });
    return this.#failure;
  }
}
