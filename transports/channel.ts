import { type Channel, TransportError } from "./transport.ts";
import { SerialWrites } from "./serial_writes.ts";

/** What the TLS alerts a peer sends after checking ferry's certificate mean. */
const TLS_ALERTS: Record<string, string> = {
  UnknownCA: "it does not trust the CA of this ferry's certificate (UnknownCA)",
  BadCertificate: "it does not accept this ferry's certificate, e.g. for its name (BadCertificate)",
  CertificateExpired: "it finds this ferry's certificate expired (CertificateExpired)",
  DecryptError: "the handshake did not verify (DecryptError)",
};

/**
 * Turns a socket error from Deno into a short, readable reason ("connection
 * refused", "host name not resolved", …) for messages like
 * `Cannot connect to tcp:127.0.0.1:1: connection refused`. Falls back to the
 * error's own message when it is not one of the well-known cases.
 */
export function describeNetError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  const msg = err.message;
  const is = (cls: unknown, errno: string, text?: RegExp): boolean =>
    (typeof cls === "function" && err instanceof cls) || code === errno ||
    (text !== undefined && text.test(msg));
  const E = Deno.errors;
  if (is(E.ConnectionRefused, "ECONNREFUSED")) return "connection refused";
  if (is(E.NetworkUnreachable, "ENETUNREACH", /network is unreachable/i)) {
    return "network unreachable";
  }
  if (is(undefined, "EHOSTUNREACH", /no route to host|host is unreachable/i)) {
    return "host unreachable";
  }
  if (is(E.TimedOut, "ETIMEDOUT", /timed out/i)) return "timed out";
  if (/lookup address|name resolution|name or service not known|nodename nor servname/i.test(msg)) {
    return "host name not resolved";
  }
  if (is(E.AddrInUse, "EADDRINUSE")) return "address already in use";
  if (is(E.AddrNotAvailable, "EADDRNOTAVAIL")) return "address not available on this machine";
  if (is(E.PermissionDenied, "EACCES") || code === "EPERM") return "permission denied";
  if (err instanceof E.NotCapable) return `permission denied (${msg})`;
  if (is(E.ConnectionReset, "ECONNRESET")) return "connection reset by peer";
  if (is(E.ConnectionAborted, "ECONNABORTED")) return "connection aborted";
  if (is(E.BrokenPipe, "EPIPE")) return "broken pipe (the peer closed the connection)";
  if (is(E.NotFound, "ENOENT")) return "no such file or directory";
  if (is(E.NotConnected, "ENOTCONN")) return "not connected";
  if (/without sending TLS close_notify/i.test(msg)) {
    return "the peer closed the connection without ending TLS (no close_notify): it was cut";
  }
  const alert = /received fatal alert: (\w+)/.exec(msg)?.[1];
  if (alert === "BadRecordMac") {
    return "the peer found a TLS record damaged in transit (BadRecordMac)";
  }
  if (alert && TLS_ALERTS[alert]) return `the peer refused the TLS handshake: ${TLS_ALERTS[alert]}`;
  if (alert) return `the peer ended TLS with the alert ${alert}`;
  if (/cannot decrypt peer's message/i.test(msg)) {
    return "a TLS record failed authentication: the stream was damaged or changed in transit";
  }
  if (/corrupt message|InvalidContentType|peer is incompatible/i.test(msg)) {
    return `the peer does not speak TLS (${msg})`;
  }
  return msg;
}

/**
 * Rejects with `signal.reason` as soon as `signal` aborts, and otherwise settles
 * like `promise`. When the abort wins, a value `promise` resolves with later is
 * handed to `discard` (so a socket that connects too late is closed, not leaked).
 */
export function raceAbort<T>(
  promise: Promise<T>,
  signal: AbortSignal | undefined,
  discard: (value: T) => void,
): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) {
    promise.then(discard, () => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    let aborted = false;
    const onAbort = () => {
      aborted = true;
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        if (aborted) discard(value);
        else resolve(value);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        if (!aborted) reject(err);
      },
    );
  });
}

/**
 * Awaits a socket connect, closing a connection that completes after `signal`
 * aborted (see {@link raceAbort}). A failure rejects with a `connect-failed`
 * TransportError naming `address` and a readable reason; an abort rejects with
 * the signal's reason.
 */
export async function connectOrFail<C extends Deno.Conn>(
  connect: Promise<C>,
  signal: AbortSignal | undefined,
  address: string,
): Promise<C> {
  try {
    return await raceAbort(connect, signal, (late) => late.close());
  } catch (err) {
    if (signal?.aborted && err === signal.reason) throw err;
    throw new TransportError(
      "connect-failed",
      `Cannot connect to ${address}: ${describeNetError(err)}`,
      { cause: err },
    );
  }
}

/**
 * A {@link Channel} over a connected Deno stream socket (TCP or unix). Shared by
 * `tcp.ts` and `unix.ts` so both behave identically: writes loop until every
 * byte is out and are serialised, `close()` interrupts pending I/O, and every
 * failure names the peer. A failed write leaves reading possible, so the last
 * words of a peer that hung up (its reason, on the return path) are not lost.
 */
export class ConnChannel implements Channel {
  readonly #conn: Deno.Conn;
  #closed = false;
  #eof = false;
  /** The error that failed the channel, reported again by later calls. */
  #failure: Error | undefined;
  /** The error that ended the write side (reads go on until the peer's data ends). */
  #writeFailure: Error | undefined;
  /** Queued writes, one at a time. */
  readonly #writes = new SerialWrites();

  /** Wraps `conn`; `peer` is the URI shown in logs and errors ("tcp:127.0.0.1:4444"). */
  constructor(conn: Deno.Conn, readonly peer: string) {
    this.#conn = conn;
  }

  /**
   * True once close() ran, finish() completed, or a read error failed the channel.
   * A failed write ends only the write side: the owner closes the channel.
   */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Writes every byte of `chunk` (looping over short writes). Concurrent calls
   * are queued, never interleaved. Rejects once the channel is closed; a socket
   * error closes the channel and rejects with a message naming the peer.
   */
  write(chunk: Uint8Array): Promise<void> {
    return this.#writes.run(() => this.#writeAll(chunk));
  }

  async #writeAll(chunk: Uint8Array): Promise<void> {
    if (this.#closed) throw this.#closedError("write to");
    let off = 0;
    while (off < chunk.length) {
      if (this.#closed) throw this.#closedError("write to");
      if (this.#writeFailure) throw this.#writeFailure;
      try {
        off += await this.#conn.write(off === 0 ? chunk : chunk.subarray(off));
      } catch (err) {
        // The write side is broken, but what the peer sent before it hung up (a
        // destination's reason for failing) can still be read: only reads close.
        if (this.#closed) throw this.#closedError("write to", err);
        this.#writeFailure = new Error(`Cannot write to ${this.peer}: ${describeNetError(err)}`, {
          cause: err,
        });
        throw this.#writeFailure;
      }
    }
  }

  /** Reads up to `buf.length` bytes; resolves `null` at end of stream (and ever after). */
  async read(buf: Uint8Array): Promise<number | null> {
    if (this.#closed) throw this.#closedError("read from");
    if (this.#eof) return null;
    try {
      const n = await this.#conn.read(buf);
      if (n === null) this.#eof = true;
      return n;
    } catch (err) {
      throw this.#fail("read from", err);
    }
  }

  /**
   * Waits for queued writes, shuts down the write side (the peer reads EOF after
   * the last byte), then closes. Rejects if a write failed or the channel was
   * already closed; closes the socket in every case.
   */
  async finish(): Promise<void> {
    if (this.#closed) throw this.#closedError("finish");
    try {
      await this.#writes.idle;
      if (this.#closed) throw this.#closedError("finish");
      try {
        await this.#conn.closeWrite();
      } catch (err) {
        throw this.#fail("finish", err);
      }
    } finally {
      this.close();
    }
  }

  /** Closes the socket; pending reads and writes reject. Safe to call any number of times. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already released by Deno (e.g. after a failed op): nothing left to free.
    }
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #closedError(what: string, cause?: unknown): Error {
    if (this.#failure) return this.#failure;
    return new Error(`Cannot ${what} ${this.peer}: the channel is closed`, { cause });
  }

  /** Turns an I/O error into the error to throw, closing the channel if it was a real failure. */
  #fail(what: string, err: unknown): Error {
    // close() during the op makes Deno reject it with Interrupted/BadResource.
    if (this.#closed) return this.#closedError(what, err);
    this.close();
    this.#failure = new Error(`Cannot ${what} ${this.peer}: ${describeNetError(err)}`, {
      cause: err,
    });
    return this.#failure;
  }
}

/**
 * Accepts the next connection of a socket listener; a failure becomes an Error
 * naming the listener's `address` (or saying it is closed, when `isClosed()`).
 */
export async function acceptConn<C>(
  listener: { accept(): Promise<C> },
  address: string,
  isClosed: () => boolean,
): Promise<C> {
  if (isClosed()) throw new Error(`Listener ${address} is closed`);
  try {
    return await listener.accept();
  } catch (err) {
    if (isClosed()) throw new Error(`Listener ${address} is closed`, { cause: err });
    throw new Error(`Cannot accept on ${address}: ${describeNetError(err)}`, { cause: err });
  }
}
