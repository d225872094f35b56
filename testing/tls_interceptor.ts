/**
 * A man in the middle for TLS tests: it listens with its own certificate, ends
 * each TLS connection it accepts, and opens a second one to the real destination
 * (trusting the real CA), copying bytes between the two. A source that checks
 * the destination's certificate must refuse it; what it saw is recorded.
 * @module
 */
import type { CertFiles } from "./certs.ts";

/** Where the interceptor forwards to, and the CA it trusts for that. */
export interface InterceptTarget {
  readonly hostname: string;
  readonly port: number;
  /** The PEM CA file the real destination's certificate chains to. */
  readonly caFile: string;
  /** The name to expect on the destination's certificate (default `hostname`). */
  readonly serverName?: string;
}

/** A TLS-terminating proxy on 127.0.0.1 presenting `cert` (see the module comment). */
export class TlsInterceptor implements AsyncDisposable {
  readonly #listener: Deno.TlsListener;
  readonly #conns = new Set<Deno.Conn>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #loop: Promise<void>;
  /** The URI a source should migrate to. */
  readonly address: string;
  /** Client handshakes that failed, with the TLS library's words. */
  readonly refusals: string[] = [];
  /** Bytes of plaintext the interceptor read from clients (it saw the stream). */
  intercepted = 0;

  private constructor(listener: Deno.TlsListener, target: InterceptTarget, ca: string) {
    this.#listener = listener;
    this.address = `tcp:127.0.0.1:${listener.addr.port}`;
    this.#loop = this.#accept(target, ca);
  }

  /** Listens on a free loopback port with `cert` and forwards to `target`. */
  static async start(target: InterceptTarget, cert: CertFiles): Promise<TlsInterceptor> {
    const listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: await Deno.readTextFile(cert.cert),
      key: await Deno.readTextFile(cert.key),
    });
    return new TlsInterceptor(listener, target, await Deno.readTextFile(target.caFile));
  }

  async #accept(target: InterceptTarget, ca: string): Promise<void> {
    for (;;) {
      let client: Deno.TlsConn;
      try {
        client = await this.#listener.accept();
      } catch {
        return;
      }
      const task = this.#serve(client, target, ca);
      this.#tasks.add(task);
      task.finally(() => this.#tasks.delete(task));
    }
  }

  async #serve(client: Deno.TlsConn, target: InterceptTarget, ca: string): Promise<void> {
    this.#conns.add(client);
    try {
      await client.handshake();
    } catch (e) {
      this.refusals.push((e as Error).message);
      this.#close(client);
      return;
    }
    let upstream: Deno.TlsConn;
    try {
      upstream = await Deno.connectTls({
        hostname: target.hostname,
        port: target.port,
        caCerts: [ca],
      });
      this.#conns.add(upstream);
      await upstream.handshake();
    } catch {
      this.#close(client);
      return;
    }
    await Promise.all([this.#pump(client, upstream, true), this.#pump(upstream, client, false)]);
    this.#close(client);
    this.#close(upstream);
  }

  async #pump(from: Deno.Conn, to: Deno.Conn, fromClient: boolean): Promise<void> {
    const buf = new Uint8Array(64 << 10);
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        if (fromClient) this.intercepted += n;
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch {
      // A reset or a close ends this direction.
    }
    this.#close(from);
    this.#close(to);
  }

  #close(c: Deno.Conn): void {
    if (!this.#conns.delete(c)) return;
    try {
      c.close();
    } catch {
      // Already closed.
    }
  }

  /** Stops listening, closes every connection and waits for the copies to end. */
  async close(): Promise<void> {
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    await this.#loop;
    for (const c of [...this.#conns]) this.#close(c);
    await Promise.all([...this.#tasks]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
