/**
 * TLS on `tcp:` (docs/ARCHITECTURE.md, "Transport security"), QEMU's `tls-creds` model:
 * the URI stays `tcp:HOST:PORT` and parameters say to encrypt it. The source
 * connects over TCP, then runs a TLS handshake with `Deno.startTls`, which checks
 * the destination's certificate against the CA bundle and the expected name (a
 * name that may differ from the address dialled); the destination listens with
 * `Deno.listenTls`. Deno cannot ask a client for a certificate, so the source
 * proves who it is inside the encrypted channel (transports/peer_auth.ts).
 * @module
 */
import { fileReadReason } from "./peer_auth.ts";
import { acceptConn, ConnChannel, connectOrFail, describeNetError, raceAbort } from "./channel.ts";
import { type Channel, type Listener, type TlsOptions, TransportError } from "./transport.ts";
import { formatUri, parseUri } from "./uri.ts";

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----/;
const PEM_KEY = /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/;

function parseTcp(uri: string): { host: string; port: number } {
  const parsed = parseUri(uri);
  if (parsed.scheme !== "tcp") {
    throw new TransportError("bad-uri", `Invalid migration URI "${uri}": TLS runs on tcp: only`);
  }
  return parsed;
}

/**
 * Reads the PEM file `path` (`what` and `param` name it in errors); throws an
 * Error saying why it cannot be used: unreadable, or no `marker` in it.
 */
async function readPem(path: string, what: string, param: string, marker: RegExp) {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const why = fileReadReason(err);
    throw new Error(`cannot read the ${what} ${path} (${param}): ${why}`, { cause: err });
  }
  if (!marker.test(text)) throw new Error(`the ${what} ${path} (${param}) holds no PEM ${what}`);
  return text;
}

/**
 * Connects to `tcp:HOST:PORT` and runs the TLS handshake before resolving: the
 * destination's certificate must chain to `tls.caFile` (or one of Deno's built-in
 * roots) and be for `tls.hostname` (default HOST). Every failure rejects with a
 * `connect-failed` TransportError saying what was wrong with the certificate or
 * the peer; aborting `signal` rejects with its reason and closes the connection.
 */
export async function connectTls(
  uri: string,
  tls: TlsOptions,
  signal?: AbortSignal,
): Promise<Channel> {
  const { host, port } = parseTcp(uri);
  const address = formatUri({ scheme: "tcp", host, port });
  const name = tls.hostname ?? host;
  signal?.throwIfAborted();
  let caCerts: string[] | undefined;
  if (tls.caFile !== undefined) {
    try {
      caCerts = [await readPem(tls.caFile, "CA bundle", "tls_ca", PEM_CERTIFICATE)];
    } catch (err) {
      throw new TransportError(
        "connect-failed",
        `Cannot connect to ${address} over TLS: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }
  const tcp = await connectOrFail(
    Deno.connect({ hostname: host, port, transport: "tcp", signal }),
    signal,
    address,
  );
  tcp.setNoDelay(true);
  let conn: Deno.TlsConn | undefined;
  try {
    // startTls takes the TCP connection over (closing it is then the TLS connection's job).
    conn = await Deno.startTls(tcp, { hostname: name, ...(caCerts ? { caCerts } : {}) });
    await raceAbort(conn.handshake(), signal, () => {});
    return new ConnChannel(conn, address);
  } catch (err) {
    try {
      (conn ?? tcp).close();
    } catch {
      // Already released.
    }
    if (signal?.aborted && err === signal.reason) throw err;
    throw new TransportError(
      "connect-failed",
      `Cannot connect to ${address} over TLS: ${describeHandshakeError(err, name, tls)}`,
      { cause: err },
    );
  }
}

/**
 * Why a source's TLS handshake failed, in words: what was wrong with the
 * destination's certificate (and which parameter decides it), or that the peer
 * does not speak TLS. The TLS library's own text follows in brackets.
 */
export function describeHandshakeError(err: unknown, name: string, tls: TlsOptions): string {
  const msg = err instanceof Error ? err.message : String(err);
  const trusted = tls.caFile !== undefined
    ? `the CA in ${tls.caFile} (tls_ca)`
    : "Deno's built-in roots (set tls_ca to trust your own CA)";
  let why: string;
  if (/UnknownIssuer/i.test(msg)) {
    why = `the destination's certificate is not signed by ${trusted}`;
  } else if (/Expired/i.test(msg)) {
    why = "the destination's certificate has expired";
  } else if (/NotValidYet/i.test(msg)) {
    why = "the destination's certificate is not valid yet";
  } else if (/not valid for name|NotValidForName/i.test(msg)) {
    why = `the destination's certificate is not for the name "${name}" (tls_hostname)`;
  } else if (/corrupt message|InvalidContentType|peer is incompatible|InvalidMessage/i.test(msg)) {
    why = "the destination does not speak TLS (is tls on there?)";
  } else if (/eof|reset|broken pipe|closed/i.test(msg)) {
    why = "the destination closed the connection during the TLS handshake";
  } else {
    why = "the TLS handshake failed";
  }
  return `${why} [${msg}]`;
}

/** A TLS listener; `address` is the bound tcp: URI with the real port. */
class TlsListener implements Listener {
  /** Socket peers: any number may connect. */
  readonly peers = "many" as const;
  readonly #listener: Deno.TlsListener;
  #closed = false;
  readonly address: string;

  constructor(listener: Deno.TlsListener) {
    this.#listener = listener;
    const addr = listener.addr as Deno.NetAddr;
    this.address = formatUri({ scheme: "tcp", host: addr.hostname, port: addr.port });
  }

  /** The next connection; its handshake runs on its first read (within the gate's deadline). */
  async accept(): Promise<Channel> {
    const conn = await acceptConn(this.#listener, this.address, () => this.#closed);
    const peer = conn.remoteAddr as Deno.NetAddr;
    return new ConnChannel(
      conn,
      formatUri({ scheme: "tcp", host: peer.hostname, port: peer.port }),
    );
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
 * Listens on `tcp:HOST:PORT` with TLS, presenting `tls.certFile` and
 * `tls.keyFile`. Missing, unreadable or mismatched files, and the usual socket
 * errors, reject with a `listen-failed` TransportError naming the file.
 */
export async function listenTls(uri: string, tls: TlsOptions): Promise<Listener> {
  const { host, port } = parseTcp(uri);
  const address = formatUri({ scheme: "tcp", host, port });
  const failed = (reason: string, cause?: unknown) =>
    new TransportError("listen-failed", `Cannot listen on ${address} with TLS: ${reason}`, {
      cause,
    });
  if (tls.certFile === undefined || tls.keyFile === undefined) {
    throw failed("a TLS destination needs a certificate and its key (tls_cert, tls_key)");
  }
  let cert: string;
  let key: string;
  try {
    cert = await readPem(tls.certFile, "certificate", "tls_cert", PEM_CERTIFICATE);
    key = await readPem(tls.keyFile, "private key", "tls_key", PEM_KEY);
  } catch (err) {
    throw failed((err as Error).message, err);
  }
  let listener: Deno.TlsListener;
  try {
    listener = Deno.listenTls({ hostname: host, port, transport: "tcp", cert, key });
  } catch (err) {
    const msg = (err as Error).message;
    if (/KeyMismatch|not be consistent/i.test(msg)) {
      throw failed(`the key ${tls.keyFile} (tls_key) is not the key of ${tls.certFile}`, err);
    }
    if (/certificate|private key/i.test(msg)) {
      throw failed(`${tls.certFile} / ${tls.keyFile}: ${msg}`, err);
    }
    // Socket errors read the same as plain tcp:'s.
    throw failed(describeNetError(err), err);
  }
  return new TlsListener(listener);
}
