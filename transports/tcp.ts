import { acceptConn, ConnChannel, connectOrFail, describeNetError } from "./channel.ts";
import { type Channel, type Listener, TransportError } from "./transport.ts";
import { formatUri, parseUri } from "./uri.ts";

type TcpUri = { readonly host: string; readonly port: number };

function parseTcpUri(uri: string): TcpUri {
  const parsed = parseUri(uri);
  if (parsed.scheme !== "tcp") {
    throw new TransportError("bad-uri", `Invalid migration URI "${uri}": expected tcp:HOST:PORT`);
  }
  return parsed;
}

function tcpUri(addr: Deno.NetAddr): string {
  return formatUri({ scheme: "tcp", host: addr.hostname, port: addr.port });
}

function tcpChannel(conn: Deno.TcpConn): Channel {
  conn.setNoDelay(true);
  return new ConnChannel(conn, tcpUri(conn.remoteAddr));
}

/**
 * Connects to `tcp:HOST:PORT` (IPv4, `[IPv6]` or a host name) and returns a
 * {@link Channel} with Nagle off. Failures reject with a `connect-failed`
 * TransportError giving a readable reason; aborting `signal` cancels a connect
 * in progress and rejects with `signal.reason`.
 */
export async function connectTcp(uri: string, signal?: AbortSignal): Promise<Channel> {
  const { host, port } = parseTcpUri(uri);
  signal?.throwIfAborted();
  // Deno cancels the connect itself on abort; connectOrFail also closes a late
  // connection (not leaked) if the abort lands as it completes.
  const conn = await connectOrFail(
    Deno.connect({ hostname: host, port, transport: "tcp", signal }),
    signal,
    formatUri({ scheme: "tcp", host, port }),
  );
  return tcpChannel(conn);
}

/** A TCP listener; `address` carries the bound IP and the real port. */
class TcpListener implements Listener {
  /** Socket peers: any number may connect. */
  readonly peers = "many" as const;
  readonly #listener: Deno.TcpListener;
  #closed = false;
  readonly address: string;

  constructor(listener: Deno.TcpListener) {
    this.#listener = listener;
    this.address = tcpUri(listener.addr);
  }

  async accept(): Promise<Channel> {
    const conn = await acceptConn(this.#listener, this.address, () => this.#closed);
    return tcpChannel(conn);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // Already released.
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Listens on `tcp:HOST:PORT`. With port 0 the OS picks a free port, and the
 * listener's `address` reports it (`tcp:127.0.0.1:43211`, `tcp:[::1]:43211`);
 * a host name is reported as the address it resolved to. Failures (address in
 * use, not local, permission) reject with a `listen-failed` TransportError.
 */
export function listenTcp(uri: string): Promise<Listener> {
  try {
    const { host, port } = parseTcpUri(uri);
    let listener: Deno.TcpListener;
    try {
      listener = Deno.listen({ hostname: host, port, transport: "tcp" });
    } catch (err) {
      throw new TransportError(
        "listen-failed",
        `Cannot listen on ${formatUri({ scheme: "tcp", host, port })}: ${describeNetError(err)}`,
        { cause: err },
      );
    }
    return Promise.resolve(new TcpListener(listener));
  } catch (err) {
    return Promise.reject(err);
  }
}
