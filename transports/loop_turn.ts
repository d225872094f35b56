/**
 * A cheap way to let Deno's event loop poll I/O in the middle of a long-running
 * loop (the migration sender and loader), so the HTTP API keeps answering.
 *
 * Awaiting a socket write or read that completes at once (loopback, a socket
 * buffer with room or with data) never returns to the event loop; a microtask or
 * `setImmediate` does not either. `setTimeout(0)` does, but costs 2 ms of idle
 * time per call here (timer granularity). This module keeps a connected loopback
 * socket pair: a turn starts a read on one end, writes one byte on the other and
 * awaits the read — the read can only complete after the runtime polled the OS for
 * I/O readiness, which is exactly the turn the HTTP server needs. It costs 10–30 µs.
 * @module
 */

/** Gives the event loop one I/O turn; see {@link openLoopTurn}. */
export interface LoopTurn extends Disposable {
  /** True when turns go through the socket pair (µs); false for the timer fallback (~2 ms). */
  readonly cheap: boolean;
  /** Resolves after the event loop polled I/O once. Concurrent callers share a turn. */
  turn(): Promise<void>;
  /** Closes the socket pair; later turns fall back to a timer. Idempotent. */
  close(): void;
}

/** A turn through a zero-delay timer (2 ms here): the fallback when no socket pair exists. */
export function timerTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

class SocketLoopTurn implements LoopTurn {
  readonly #a: Deno.Conn;
  readonly #b: Deno.Conn;
  readonly #one = new Uint8Array(1);
  readonly #sink = new Uint8Array(64);
  #pending: Promise<void> | null = null;
  #closed = false;

  get cheap(): boolean {
    return !this.#closed;
  }

  constructor(a: Deno.Conn, b: Deno.Conn) {
    this.#a = a;
    this.#b = b;
  }

  turn(): Promise<void> {
    if (this.#closed) return timerTurn();
    this.#pending ??= this.#run().finally(() => {
      this.#pending = null;
    });
    return this.#pending;
  }

  async #run(): Promise<void> {
    try {
      const read = this.#b.read(this.#sink);
      await this.#a.write(this.#one);
      await read;
    } catch {
      // Closed underneath us (shutdown): a timer still yields.
      if (!this.#closed) this.close();
      await timerTurn();
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of [this.#a, this.#b]) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens a {@link LoopTurn} over a loopback TCP connection to itself (the listener
 * is closed as soon as that one connection is accepted, and a stranger that got in
 * first is refused). Falls back to timer turns when loopback sockets cannot be
 * opened (no network permission).
 */
export async function openLoopTurn(): Promise<LoopTurn> {
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  } catch {
    return new TimerLoopTurn();
  }
  let a: Deno.TcpConn | undefined;
  try {
    a = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    const local = a.localAddr.port;
    for (;;) {
      const b = await listener.accept();
      if (b.remoteAddr.port === local) {
        a.setNoDelay(true);
        b.setNoDelay(true);
        return new SocketLoopTurn(a, b);
      }
      b.close(); // someone else's connection
    }
  } catch {
    a?.close();
    return new TimerLoopTurn();
  } finally {
    listener.close();
  }
}

class TimerLoopTurn implements LoopTurn {
  readonly cheap = false;
  turn(): Promise<void> {
    return timerTurn();
  }
  close(): void {}
  [Symbol.dispose](): void {}
}
