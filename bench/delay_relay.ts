/**
 * A userspace delay line for TCP: a relay that accepts connections on one address,
 * connects each to a target, and forwards bytes both ways no earlier than `delayMs`
 * after it read them — a stand-in for `tc netem delay` where the kernel lacks netem.
 *
 * Every chunk read is stamped with its arrival time and written on once
 * `arrival + delayMs` has passed, in order. The relay never buffers without bound:
 * per direction at most `maxInFlight` bytes are held (read but not yet written on);
 * at the bound it stops reading, so TCP back-pressure reaches the sender. With
 * `maxInFlight` ≥ rate × delay the line sustains `rate`; the slow-link benchmark
 * uses twice the bandwidth-delay product.
 *
 * What it does not emulate: the relay terminates TCP on both sides (a split
 * connection), so the 5 ms never reach the kernel's TCP — ACKs are not delayed,
 * congestion control sees the short hops' RTTs. Application-level round trips
 * (a request and its answer) do see 2 × delay.
 *
 * End of stream travels too: when one side half-closes, the other side is
 * half-closed after the data before it was delivered; an error on either side
 * closes both connections at once.
 *
 * ```ts
 * await using relay = DelayRelay.start({
 *   target: { hostname: "10.203.0.2", port: 4444 },
 *   delayMs: 5,
 *   maxInFlight: 2 * 625_000,
 * });
 * // connect to relay.addr.port instead of 10.203.0.2:4444
 * ```
 */

/** Options of {@link DelayRelay.start}. */
export interface DelayRelayOptions {
  /** Where connections are forwarded to. */
  target: { hostname: string; port: number };
  /** One-way delay added to every byte, ms (each direction). */
  delayMs: number;
  /** Most bytes held per direction of one connection (read, not yet written on). */
  maxInFlight: number;
  /** Address to listen on; default 127.0.0.1, port 0 (a free port). */
  listen?: { hostname?: string; port?: number };
  /** Largest single read, bytes (default 256 KiB). */
  readSize?: number;
  /** Clock in ms (default `performance.now`); for tests. */
  now?: () => number;
}

/** Counters of a relay, summed over its connections. */
export interface DelayRelayStats {
  /** Connections accepted. */
  connections: number;
  /** Bytes forwarded from clients to the target (written on). */
  bytesUp: number;
  /** Bytes forwarded from the target back to clients (written on). */
  bytesDown: number;
  /** Bytes read from clients (forwarded or still held). */
  readUp: number;
  /** Bytes read from the target (forwarded or still held). */
  readDown: number;
  /** Largest number of bytes one direction of one connection ever held. */
  peakInFlight: number;
  /** Times a direction stopped reading because it held `maxInFlight` bytes. */
  pauses: number;
}

/** One queued chunk: bytes (or null for end of stream) and when they may go on. */
interface Slot {
  data: Uint8Array | null;
  due: number;
}

/** Bytes coalesced into one write when several chunks are due at once. */
const MAX_WRITE = 256 * 1024;

/** One direction of one connection: reads `src`, writes `dst` `delayMs` later. */
class DelayLine {
  readonly #queue: Slot[] = [];
  #head = 0;
  #inFlight = 0;
  #stopped = false;
  #wakeReader: (() => void) | null = null;
  #wakeWriter: (() => void) | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #scratch: Uint8Array;

  constructor(
    private readonly src: Deno.Conn,
    private readonly dst: Deno.Conn,
    private readonly opts: { delayMs: number; maxInFlight: number; now: () => number },
    private readonly counters: {
      read: (n: number) => void;
      wrote: (n: number) => void;
      held: (n: number) => void;
      paused: () => void;
    },
    private readonly fail: () => void,
    readSize: number,
  ) {
    this.#scratch = new Uint8Array(Math.max(1, Math.min(readSize, opts.maxInFlight)));
  }

  /** Runs until end of stream has been passed on, or the line is stopped. */
  run(): Promise<[void, void]> {
    return Promise.all([this.#read(), this.#write()]);
  }

  /** Stops both loops (the caller closes the connections to end pending I/O). */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#wakeReader?.();
    this.#wakeWriter?.();
  }

  async #read(): Promise<void> {
    const { maxInFlight, delayMs, now } = this.opts;
    while (!this.#stopped) {
      if (this.#inFlight >= maxInFlight) {
        this.counters.paused();
        while (this.#inFlight >= maxInFlight && !this.#stopped) {
          await new Promise<void>((r) => this.#wakeReader = r);
          this.#wakeReader = null;
        }
        continue;
      }
      const room = Math.min(this.#scratch.length, maxInFlight - this.#inFlight);
      let n: number | null;
      try {
        n = await this.src.read(this.#scratch.subarray(0, room));
      } catch {
        if (!this.#stopped) this.fail();
        return;
      }
      if (this.#stopped) return;
      if (n === null) {
        this.#push({ data: null, due: now() + delayMs });
        return;
      }
      this.#inFlight += n;
      this.counters.read(n);
      this.counters.held(this.#inFlight);
      this.#push({ data: this.#scratch.slice(0, n), due: now() + delayMs });
    }
  }

  #push(slot: Slot): void {
    this.#queue.push(slot);
    this.#wakeWriter?.();
  }

  async #write(): Promise<void> {
    const { now } = this.opts;
    while (!this.#stopped) {
      if (this.#head === this.#queue.length) {
        await new Promise<void>((r) => this.#wakeWriter = r);
        this.#wakeWriter = null;
        continue;
      }
      const wait = this.#queue[this.#head].due - now();
      if (wait > 0) {
        await new Promise<void>((r) => {
          this.#wakeWriter = r;
          this.#timer = setTimeout(r, wait);
        });
        clearTimeout(this.#timer);
        this.#timer = undefined;
        this.#wakeWriter = null;
        continue;
      }
      // Everything due now (up to MAX_WRITE bytes) goes out in one write.
      const t = now();
      const parts: Uint8Array[] = [];
      let size = 0;
      let eof = false;
      while (this.#head < this.#queue.length && this.#queue[this.#head].due <= t) {
        const data = this.#queue[this.#head].data;
        if (data === null) {
          eof = true;
          this.#head++;
          break;
        }
        if (size > 0 && size + data.length > MAX_WRITE) break;
        parts.push(data);
        size += data.length;
        this.#head++;
      }
      if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue.splice(0, this.#head);
        this.#head = 0;
      }
      if (size > 0) {
        const bytes = parts.length === 1 ? parts[0] : concat(parts, size);
        try {
          for (let off = 0; off < bytes.length;) off += await this.dst.write(bytes.subarray(off));
        } catch {
          if (!this.#stopped) this.fail();
          return;
        }
        this.#inFlight -= size;
        this.counters.wrote(size);
        this.#wakeReader?.();
      }
      if (eof) {
        try {
          await (this.dst as Deno.TcpConn).closeWrite();
        } catch {
          // the peer is gone already; the other direction notices
        }
        return;
      }
    }
  }
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function closeQuietly(conn: Deno.Conn | undefined): void {
  try {
    conn?.close();
  } catch {
    // already closed
  }
}

/**
 * A TCP relay adding a fixed one-way delay in both directions with bounded
 * buffering (see the module doc). Start with {@link DelayRelay.start}; close (or
 * `await using`) to stop accepting and drop every connection.
 */
export class DelayRelay implements AsyncDisposable {
  /** The address the relay listens on (with the real port). */
  readonly addr: Deno.NetAddr;
  readonly #listener: Deno.TcpListener;
  readonly #opts: Required<Omit<DelayRelayOptions, "listen">>;
  readonly #aborts = new Set<() => void>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #accepting: Promise<void>;
  #closed = false;
  readonly #stats: DelayRelayStats = {
    connections: 0,
    bytesUp: 0,
    bytesDown: 0,
    readUp: 0,
    readDown: 0,
    peakInFlight: 0,
    pauses: 0,
  };

  private constructor(listener: Deno.TcpListener, opts: DelayRelayOptions) {
    if (!(opts.delayMs >= 0)) throw new RangeError("delayMs must be ≥ 0");
    if (!(opts.maxInFlight >= 1)) throw new RangeError("maxInFlight must be ≥ 1");
    this.#listener = listener;
    this.addr = listener.addr;
    this.#opts = {
      target: opts.target,
      delayMs: opts.delayMs,
      maxInFlight: Math.floor(opts.maxInFlight),
      readSize: opts.readSize ?? 256 * 1024,
      now: opts.now ?? (() => performance.now()),
    };
    this.#accepting = this.#acceptLoop();
  }

  /** Listens (default 127.0.0.1, a free port) and starts relaying to `opts.target`. */
  static start(opts: DelayRelayOptions): DelayRelay {
    const listener = Deno.listen({
      hostname: opts.listen?.hostname ?? "127.0.0.1",
      port: opts.listen?.port ?? 0,
      transport: "tcp",
    });
    try {
      return new DelayRelay(listener, opts);
    } catch (e) {
      listener.close();
      throw e;
    }
  }

  /** A snapshot of the relay's counters. */
  stats(): DelayRelayStats {
    return { ...this.#stats };
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // listener closed
      }
      if (this.#closed) {
        closeQuietly(conn);
        return;
      }
      const task = this.#handle(conn).finally(() => this.#tasks.delete(task));
      this.#tasks.add(task);
    }
  }

  async #handle(client: Deno.TcpConn): Promise<void> {
    this.#stats.connections++;
    let upstream: Deno.TcpConn | undefined;
    let aborted = false;
    const lines: DelayLine[] = [];
    const connecting = new AbortController();
    const abort = () => {
      if (aborted) return;
      aborted = true;
      connecting.abort();
      for (const line of lines) line.stop();
      closeQuietly(client);
      closeQuietly(upstream);
    };
    this.#aborts.add(abort);
    try {
      const { target } = this.#opts;
      try {
        upstream = await Deno.connect({
          hostname: target.hostname,
          port: target.port,
          signal: connecting.signal,
        });
      } catch {
        return; // the client sees its connection closed
      }
      if (aborted) return;
      client.setNoDelay(true);
      upstream.setNoDelay(true);
      const s = this.#stats;
      const held = (n: number) => {
        if (n > s.peakInFlight) s.peakInFlight = n;
      };
      const paused = () => s.pauses++;
      const line = { delayMs: this.#opts.delayMs, maxInFlight: this.#opts.maxInFlight };
      const now = this.#opts.now;
      lines.push(
        new DelayLine(
          client,
          upstream,
          { ...line, now },
          {
            read: (n) => s.readUp += n,
            wrote: (n) => s.bytesUp += n,
            held,
            paused,
          },
          abort,
          this.#opts.readSize,
        ),
        new DelayLine(
          upstream,
          client,
          { ...line, now },
          {
            read: (n) => s.readDown += n,
            wrote: (n) => s.bytesDown += n,
            held,
            paused,
          },
          abort,
          this.#opts.readSize,
        ),
      );
      await Promise.all(lines.map((l) => l.run()));
    } finally {
      this.#aborts.delete(abort);
      abort();
      closeQuietly(upstream); // connected after an abort
    }
  }

  /** Stops accepting, drops every connection and waits until all of it is released. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#listener.close();
      } catch {
        // already closed
      }
      for (const abort of [...this.#aborts]) abort();
    }
    await this.#accepting;
    while (this.#tasks.size > 0) await Promise.all([...this.#tasks]);
  }

  /** Same as {@link DelayRelay.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
