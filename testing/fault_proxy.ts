/**
 * A fault-injecting proxy for migration tests: it listens on loopback (tcp port 0,
 * or a unix socket path), forwards every connection to a target ferry's incoming
 * address, and can break the source → destination stream on purpose:
 *
 * - `cutAt: n` — forward exactly n bytes, then close both connections (a pulled cable);
 * - `stallAt: n` — forward exactly n bytes, then stop forwarding in both directions
 *   and stop reading, with both connections left open (a hung peer or network);
 * - `throttle: bytesPerSecond` — forward slowly;
 * - `cutOnReturn` — cut when the destination sends its SHUT (it has the whole stream;
 *   the PONGs answering the source's drain PINGs pass);
 * - `cutAfterReturn: k` — let the answer through, then cut after k more source bytes;
 * - `cutBeforeEnd: k` — cut with the stream's last k bytes withheld;
 * - `flipAt: n` — XOR the stream's byte n with `flipMask` (default 0x01): a damaged
 *   byte that TCP's checksum did not catch;
 * - `delayMs: d` — deliver every byte d ms after it arrived, in each direction (a
 *   link with a 2d round trip), still in order;
 * - {@link FaultProxy.cut}, {@link FaultProxy.stall}, {@link FaultProxy.resume} at any time;
 * - {@link FaultProxy.holdConnects} — stop accepting and fill the kernel's accept
 *   queue, so the next connect hangs unanswered (a migration stays in `setup`).
 *
 * Bytes from the destination back to the source (the return path) are forwarded
 * unchanged unless the proxy is stalled or cut; with `opaque` (a TLS stream) they
 * are forwarded as they come, not message by message.
 * @module
 */

/** What to do to the source → destination stream. */
export interface FaultPlan {
  /** Close both connections once this many bytes were forwarded. */
  cutAt?: number;
  /** Stop forwarding (both ways) once this many bytes were forwarded; connections stay open. */
  stallAt?: number;
  /** Forward at most this many bytes per second. */
  throttle?: number;
  /**
   * Cut both connections when the destination first answers (its return-path
   * SHUT, sent once it loaded the whole stream), without forwarding the answer.
   */
  cutOnReturn?: boolean;
  /**
   * Forward the destination's first answer, then only this many more source bytes,
   * then cut (e.g. 2: inside the source's 5-byte switchover commit).
   */
  cutAfterReturn?: number;
  /**
   * Withhold the last this-many bytes of the stream and cut: the proxy always keeps
   * the newest bytes back, and when the source sends nothing more for `quietMs`
   * (it finished and waits for the destination's answer), it cuts without them.
   */
  cutBeforeEnd?: number;
  /** Quiet time that marks the end of the stream for `cutBeforeEnd` (default 300 ms). */
  quietMs?: number;
  /** XOR the source → destination byte at this stream offset with `flipMask`. */
  flipAt?: number;
  /** The bits flipAt flips (default 0x01). */
  flipMask?: number;
  /** One-way delay added to every byte, both directions, ms. */
  delayMs?: number;
  /**
   * The bytes are opaque (TLS): the destination's answers are forwarded as they
   * come instead of as return-path messages, so `cutOnReturn`, `cutAfterReturn`
   * and `cutBeforeEnd` (which read the stream's messages) do not apply.
   */
  opaque?: boolean;
}

type Endpoint = { transport: "tcp"; hostname: string; port: number } | {
  transport: "unix";
  path: string;
};

function endpoint(uri: string): Endpoint {
  if (uri.startsWith("unix:")) return { transport: "unix", path: uri.slice(5) };
  const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d+)$/.exec(uri);
  if (!m) throw new Error(`FaultProxy: unsupported address ${uri}`);
  const host = m[1].startsWith("[") ? m[1].slice(1, -1) : m[1];
  return { transport: "tcp", hostname: host, port: Number(m[2]) };
}

function connectTo(ep: Endpoint, signal?: AbortSignal): Promise<Deno.Conn> {
  return ep.transport === "unix"
    ? Deno.connect({ transport: "unix", path: ep.path })
    : Deno.connect({ transport: "tcp", hostname: ep.hostname, port: ep.port, signal });
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A loopback proxy between a migration source and its destination that injects faults. */
export class FaultProxy implements AsyncDisposable {
  readonly #listener: Deno.Listener;
  readonly #target: Endpoint;
  readonly #plan: FaultPlan;
  readonly #conns = new Set<Deno.Conn>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #fillers: Deno.Conn[] = [];
  #acceptLoop: Promise<void>;
  #closed = false;
  #holding = false;
  #stalled = false;
  #wakeGate: (() => void)[] = [];
  #waiters: { n: number; resolve: () => void }[] = [];
  #throttle: number;
  #throttleStart = 0;
  #throttleBase = 0;
  #cutAt: number | undefined;
  #answered = false;
  /** Destination → source bytes not yet forwarded (an incomplete return-path message). */
  #returning: Uint8Array = new Uint8Array(0);
  /** The last 9 source bytes read (is the source waiting on a PING?). */
  #recent: Uint8Array = new Uint8Array(0);
  /** The URI the source should migrate to. */
  readonly address: string;
  /** Source → destination bytes forwarded so far (all connections). */
  forwarded = 0;
  /** Destination → source bytes forwarded so far. */
  returned = 0;
  /** Connections accepted so far. */
  connections = 0;
  /** True once a cut happened (planned or by {@link cut}). */
  wasCut = false;
  /** True once a stall began. */
  wasStalled = false;
  /** True once the planned flip was applied. */
  flipped = false;

  private constructor(listener: Deno.Listener, target: Endpoint, plan: FaultPlan) {
    this.#listener = listener;
    this.#target = target;
    this.#plan = plan;
    this.#throttle = plan.throttle ?? 0;
    this.#cutAt = plan.cutAt;
    const addr = listener.addr;
    this.address = addr.transport === "unix"
      ? `unix:${(addr as Deno.UnixAddr).path}`
      : `tcp:127.0.0.1:${(addr as Deno.NetAddr).port}`;
    this.#acceptLoop = this.#accept();
  }

  /**
   * Starts a proxy to `target` (`tcp:HOST:PORT` or `unix:PATH`, e.g. a destination's
   * printed incoming address). It listens on `listen`: `tcp:127.0.0.1:0` (default)
   * or `unix:PATH`.
   */
  static start(target: string, plan: FaultPlan = {}, listen = "tcp:127.0.0.1:0"): FaultProxy {
    const ep = endpoint(listen);
    const listener = ep.transport === "unix"
      ? Deno.listen({ transport: "unix", path: ep.path })
      : Deno.listen({ transport: "tcp", hostname: ep.hostname, port: ep.port });
    return new FaultProxy(listener, endpoint(target), plan);
  }

  /** Cuts every connection now (both sides see the connection end). */
  cut(): void {
    this.wasCut = true;
    for (const c of this.#conns) this.#closeConn(c);
    this.#wake();
  }

  /** Stops forwarding and reading in both directions; connections stay open. */
  stall(): void {
    this.#stalled = true;
    this.wasStalled = true;
  }

  /** Forwards again after a stall. */
  resume(): void {
    this.#stalled = false;
    for (const wake of this.#wakeGate.splice(0)) wake();
  }

  /** Changes the throttle (bytes/s; 0 = unlimited). */
  setThrottle(bytesPerSecond: number): void {
    this.#throttle = bytesPerSecond;
    this.#throttleStart = performance.now();
    this.#throttleBase = this.forwarded;
  }

  /** Resolves once `n` bytes were forwarded, or the proxy cut, stalled or closed. */
  whenForwarded(n: number): Promise<void> {
    if (this.forwarded >= n || this.#closed || this.wasCut) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ n, resolve }));
  }

  /**
   * Stops accepting and fills the kernel's accept queue with idle connections, so
   * that the next connect to this proxy is never answered (its SYN is dropped) —
   * the connecting migration stays in `setup`. Only for a tcp proxy.
   */
  async holdConnects(): Promise<void> {
    const ep = endpoint(this.address);
    if (ep.transport !== "tcp") throw new Error("holdConnects() needs a tcp proxy");
    this.#holding = true;
    for (let i = 0; i < 8192; i++) {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(new Error("connect unanswered")), 1000);
      try {
        this.#fillers.push(await connectTo(ep, abort.signal));
      } catch {
        return; // the queue is full: connects now hang
      } finally {
        clearTimeout(timer);
      }
    }
    throw new Error("holdConnects(): the accept queue never filled");
  }

  /** Closes the listener and every connection, and waits for the pumps to end. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    for (const c of this.#conns) this.#closeConn(c);
    for (const c of this.#fillers.splice(0)) this.#closeConn(c);
    this.resume();
    this.#wake();
    await this.#acceptLoop;
    await Promise.all([...this.#tasks]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #accept(): Promise<void> {
    for (;;) {
      let client: Deno.Conn;
      try {
        client = await this.#listener.accept();
      } catch {
        return;
      }
      if (this.#holding || this.#closed) {
        this.#fillers.push(client); // taken from the queue while it was being filled
        if (this.#holding) return;
        continue;
      }
      this.connections++;
      this.#track(this.#serve(client));
    }
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
  }

  async #serve(client: Deno.Conn): Promise<void> {
    this.#conns.add(client);
    let upstream: Deno.Conn;
    try {
      upstream = await connectTo(this.#target);
    } catch {
      this.#closeConn(client);
      return;
    }
    this.#conns.add(upstream);
    if (this.#closed || this.wasCut) {
      this.#closeConn(client);
      this.#closeConn(upstream);
      return;
    }
    await Promise.all([
      this.#pump(client, upstream, true),
      this.#pump(upstream, client, false),
    ]);
    this.#closeConn(client);
    this.#closeConn(upstream);
  }

  /** Waits while stalled. */
  async #gate(): Promise<void> {
    while (this.#stalled && !this.#closed) {
      await new Promise<void>((resolve) => this.#wakeGate.push(resolve));
    }
  }

  async #pump(from: Deno.Conn, to: Deno.Conn, outbound: boolean): Promise<void> {
    const buf = new Uint8Array(64 << 10);
    try {
      for (;;) {
        await this.#gate();
        if (this.#closed) return;
        const limit = outbound && this.#throttle > 0
          ? Math.max(1, Math.min(buf.length, Math.floor(this.#throttle / 20)))
          : buf.length;
        const n = outbound && this.#plan.cutBeforeEnd !== undefined
          ? await this.#readOrQuiet(from, buf.subarray(0, limit))
          : await from.read(buf.subarray(0, limit));
        if (n === "quiet") {
          this.cut(); // the withheld tail never reaches the destination
          return;
        }
        if (n === null) {
          // Bytes still waiting out the delay go first.
          while (this.#delayed.get(to)?.task) await this.#delayed.get(to)!.task;
          await to.closeWrite().catch(() => {});
          return;
        }
        let chunk: Uint8Array = buf.subarray(0, n);
        if (!outbound && this.#plan.opaque) {
          await this.#send(to, chunk.slice());
          this.returned += n;
          continue;
        }
        if (!outbound) {
          // Return-path messages are `be16 type, be16 len` and len bytes (PONG and
          // SHUT carry a be32). PONGs answer the source's drain PINGs and pass; the
          // SHUT (type 1) is "the answer".
          this.#returning = concat(this.#returning, chunk);
          while (
            this.#returning.length >= 4 &&
            this.#returning.length >= 4 + ((this.#returning[2] << 8) | this.#returning[3])
          ) {
            const size = 4 + ((this.#returning[2] << 8) | this.#returning[3]);
            const msg = this.#returning.slice(0, size);
            this.#returning = this.#returning.slice(size);
            const shut = ((msg[0] << 8) | msg[1]) === 1;
            if (shut && this.#plan.cutOnReturn) {
              this.cut();
              return;
            }
            await this.#gate();
            if (shut && !this.#answered && this.#plan.cutAfterReturn !== undefined) {
              this.#cutAt = this.forwarded + this.#plan.cutAfterReturn;
            }
            if (shut) this.#answered = true;
            await this.#send(to, msg);
            this.returned += msg.length;
          }
          continue;
        }
        if (this.#plan.cutBeforeEnd !== undefined) {
          this.#recent = concat(this.#recent, chunk).slice(-9);
          chunk = this.#withhold(chunk, this.#plan.cutBeforeEnd);
          if (endsWithPing(this.#recent)) {
            // The source now waits for a PONG before its switchover: this is not the
            // end of the stream, so nothing is withheld.
            chunk = concat(chunk, this.#held);
            this.#held = new Uint8Array(0);
          }
          if (chunk.length === 0) continue;
        }
        const cutAt = this.#cutAt;
        const { stallAt } = this.#plan;
        if (cutAt !== undefined && this.forwarded + chunk.length >= cutAt) {
          const keep = Math.max(0, cutAt - this.forwarded);
          if (keep > 0) await writeAll(to, chunk.subarray(0, keep));
          this.forwarded += keep;
          this.cut();
          return;
        }
        if (stallAt !== undefined && !this.wasStalled && this.forwarded + chunk.length >= stallAt) {
          const keep = Math.max(0, stallAt - this.forwarded);
          if (keep > 0) await writeAll(to, chunk.subarray(0, keep));
          this.forwarded += keep;
          this.stall();
          this.#wake();
          chunk = chunk.subarray(keep);
          await this.#gate(); // until resume() or close()
          if (this.#closed) return;
        }
        const flipAt = this.#plan.flipAt;
        if (
          flipAt !== undefined && flipAt >= this.forwarded &&
          flipAt < this.forwarded + chunk.length
        ) {
          chunk = chunk.slice();
          chunk[flipAt - this.forwarded] ^= this.#plan.flipMask ?? 0x01;
          this.flipped = true;
        }
        await this.#send(to, chunk);
        this.forwarded += chunk.length;
        this.#wake();
        if (this.#throttle > 0) {
          if (this.#throttleStart === 0) {
            this.#throttleStart = performance.now();
            this.#throttleBase = this.forwarded - chunk.length;
          }
          const due = this.#throttleStart +
            ((this.forwarded - this.#throttleBase) / this.#throttle) * 1000;
          const wait = due - performance.now();
          if (wait > 0) await sleep(wait);
        }
      }
    } catch {
      // The destination hung up while the source still sends: its last words on the
      // return path (a failure report) still go back; the other pump ends the pair.
      if (outbound && this.#unwritable.has(to) && !this.#closed) return;
      // A closed or reset connection ends this direction; the other follows.
      this.#closeConn(from);
      this.#closeConn(to);
    }
  }

  /** Connections a write to failed (the peer hung up). */
  readonly #unwritable = new WeakSet<Deno.Conn>();

  #held = new Uint8Array(0);
  /** Per destination connection: bytes waiting out the delay, and the task sending them. */
  readonly #delayed = new Map<
    Deno.Conn,
    { queue: { due: number; bytes: Uint8Array }[]; task: Promise<void> | null }
  >();

  /** Writes `bytes` to `to` now, or after `delayMs` (in order) when the plan delays. */
  async #send(to: Deno.Conn, bytes: Uint8Array): Promise<void> {
    const delay = this.#plan.delayMs ?? 0;
    if (delay <= 0) {
      try {
        return await writeAll(to, bytes);
      } catch (e) {
        this.#unwritable.add(to);
        throw e;
      }
    }
    let line = this.#delayed.get(to);
    if (!line) {
      line = { queue: [], task: null };
      this.#delayed.set(to, line);
    }
    line.queue.push({ due: performance.now() + delay, bytes: bytes.slice() });
    if (!line.task) {
      const l = line;
      l.task = (async () => {
        try {
          while (l.queue.length > 0 && !this.#closed) {
            const wait = l.queue[0].due - performance.now();
            if (wait > 0) await sleep(wait);
            const next = l.queue.shift()!;
            await writeAll(to, next.bytes);
          }
        } catch {
          this.#closeConn(to);
        } finally {
          l.task = null;
        }
      })();
      this.#track(l.task);
    }
  }

  /** Appends `chunk` to the withheld tail; returns what may go out, keeping the newest `keep` bytes. */
  #withhold(chunk: Uint8Array, keep: number): Uint8Array {
    const all = new Uint8Array(this.#held.length + chunk.length);
    all.set(this.#held);
    all.set(chunk, this.#held.length);
    const out = Math.max(0, all.length - keep);
    this.#held = all.slice(out);
    return all.subarray(0, out);
  }

  /** Reads, or answers "quiet" when nothing arrives for quietMs. */
  async #readOrQuiet(from: Deno.Conn, buf: Uint8Array): Promise<number | null | "quiet"> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const quiet = new Promise<"quiet">((resolve) => {
      timer = setTimeout(() => resolve("quiet"), this.#plan.quietMs ?? 300);
    });
    const read = from.read(buf);
    try {
      const n = await Promise.race([read, quiet]);
      if (n === "quiet") read.catch(() => {}); // settles when cut() closes the connection
      return n;
    } finally {
      clearTimeout(timer);
    }
  }

  #wake(): void {
    const done = this.#closed || this.wasCut || this.wasStalled;
    this.#waiters = this.#waiters.filter((w) => {
      if (done || this.forwarded >= w.n) {
        w.resolve();
        return false;
      }
      return true;
    });
  }

  #closeConn(c: Deno.Conn): void {
    try {
      c.close();
    } catch {
      // already closed
    }
    this.#conns.delete(c);
  }
}

/** `a` followed by `b`, as a new array. */
function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** True when `bytes` ends with a `COMMAND PING` (0x08, be16 2, be16 4, be32 value). */
function endsWithPing(bytes: Uint8Array): boolean {
  const at = bytes.length - 9;
  return at >= 0 && bytes[at] === 0x08 && bytes[at + 1] === 0 && bytes[at + 2] === 2 &&
    bytes[at + 3] === 0 && bytes[at + 4] === 4;
}
