/**
 * A loopback TCP proxy in front of a ferry's API for the dashboard's reconnect test:
 * `blip()` drops every open connection (a network blip), `hold()` makes new
 * connections wait unanswered until `release()`.
 */
export class BlipProxy implements AsyncDisposable {
  readonly #listener: Deno.TcpListener;
  readonly #target: { hostname: string; port: number };
  readonly #open = new Set<Deno.Conn>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #accepting: Promise<void>;
  #held: (() => void)[] | null = null;
  #closed = false;

  constructor(targetUrl: string) {
    const url = new URL(targetUrl);
    this.#target = { hostname: url.hostname, port: Number(url.port) };
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#accepting = this.#accept();
  }

  /** The proxy's base URL. */
  get url(): string {
    return `http://127.0.0.1:${this.#listener.addr.port}`;
  }

  /** Connections currently forwarded. */
  get connections(): number {
    return this.#open.size / 2;
  }

  async #accept(): Promise<void> {
    for (;;) {
      let client: Deno.Conn;
      try {
        client = await this.#listener.accept();
      } catch {
        return;
      }
      const task = this.#serve(client).finally(() => this.#tasks.delete(task));
      this.#tasks.add(task);
    }
  }

  async #serve(client: Deno.Conn): Promise<void> {
    if (this.#held) await new Promise<void>((r) => this.#held!.push(r));
    if (this.#closed) {
      client.close();
      return;
    }
    let upstream: Deno.Conn;
    try {
      upstream = await Deno.connect(this.#target);
    } catch {
      client.close();
      return;
    }
    this.#open.add(client);
    this.#open.add(upstream);
    const close = () => {
      for (const c of [client, upstream]) {
        if (this.#open.delete(c)) {
          try {
            c.close();
          } catch {
            // already closed
          }
        }
      }
    };
    await Promise.all(
      [pump(client, upstream), pump(upstream, client)].map((p) => p.finally(close)),
    );
  }

  /** Drops every open connection at once. */
  blip(): void {
    for (const c of this.#open) {
      try {
        c.close();
      } catch {
        // already closed
      }
    }
    this.#open.clear();
  }

  /** New connections wait (unanswered) until release(). */
  hold(): void {
    this.#held ??= [];
  }

  /** Connections waiting (unanswered) for release(). */
  get held(): number {
    return this.#held?.length ?? 0;
  }

  /** Lets waiting and new connections through. */
  release(): void {
    const held = this.#held ?? [];
    this.#held = null;
    for (const go of held) go();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#closed = true;
    this.release();
    this.#listener.close();
    this.blip();
    await this.#accepting;
    await Promise.all([...this.#tasks]);
  }
}

async function pump(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) return;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
    }
  } catch {
    // the other side went away, or blip() closed us
  }
}
