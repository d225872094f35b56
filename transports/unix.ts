import { acceptConn, ConnChannel, connectOrFail, describeNetError } from "./channel.ts";
import { type Channel, type Listener, TransportError } from "./transport.ts";
import { MAX_UNIX_PATH_BYTES, parseUri } from "./uri.ts";
import { openSockets, raiseSendBuffer } from "./send_buffer.ts";

export { MAX_UNIX_PATH_BYTES };

function parseUnixPath(uri: string): string {
  const parsed = parseUri(uri);
  if (parsed.scheme !== "unix") {
    throw new TransportError("bad-uri", `Invalid migration URI "${uri}": expected unix:PATH`);
  }
  return parsed.path;
}

function tooLong(path: string): string | undefined {
  const bytes = new TextEncoder().encode(path).length;
  return bytes > MAX_UNIX_PATH_BYTES
    ? `path is ${bytes} bytes, longer than the ${MAX_UNIX_PATH_BYTES} a unix socket allows`
    : undefined;
}

function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/**
 * Connects to the unix socket `unix:PATH`. Failures reject with a
 * `connect-failed` TransportError ("no such file or directory" when nothing is
 * there, "connection refused" for a stale socket). Deno's unix connect takes no
 * signal, so an abort rejects at once with `signal.reason` and a connection
 * completing afterwards is closed.
 */
export async function connectUnix(uri: string, signal?: AbortSignal): Promise<Channel> {
  const path = parseUnixPath(uri);
  const address = `unix:${path}`;
  signal?.throwIfAborted();
  const long = tooLong(path);
  if (long) throw new TransportError("connect-failed", `Cannot connect to ${address}: ${long}`);
  const before = openSockets();
  const conn = await connectOrFail(Deno.connect({ transport: "unix", path }), signal, address);
  // A bigger send buffer when FFI is allowed: far fewer partial writes per stream
  // buffer. The peer is named as the kernel reports it: a listener bound elsewhere and
  // linked to `path` (as ferry's own listener is) reports its bind name.
  raiseSendBuffer(conn.remoteAddr.path ?? path, before);
  return new ConnChannel(conn, address);
}

/**
 * A unix socket listener that owns its socket file: it removes the file on
 * close(), but only while the file is still the socket it bound (same device and
 * inode), so it never deletes something another process put there since.
 */
class UnixListener implements Listener {
  /** Socket peers: any number may connect. */
  readonly peers = "many" as const;
  readonly #listener: Deno.UnixListener;
  readonly #path: string;
  readonly #dev: number;
  readonly #ino: number | null;
  #closed = false;
  readonly address: string;

  constructor(listener: Deno.UnixListener, path: string, info: Deno.FileInfo) {
    this.#listener = listener;
    this.#path = path;
    this.#dev = info.dev;
    this.#ino = info.ino;
    this.address = `unix:${path}`;
  }

  async accept(): Promise<Channel> {
    const conn = await acceptConn(this.#listener, this.address, () => this.#closed);
    // The client end of a unix connection is anonymous: name the socket it came through.
    return new ConnChannel(conn, this.address);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // Already released.
    }
    // Deno's own unlink-on-drop targets the temporary bind name (see
    // bindPrivately), so removing the socket is up to us, and only while `path`
    // is still our inode.
    try {
      const info = lstatOrNull(this.#path);
      if (info?.isSocket && info.dev === this.#dev && info.ino === this.#ino) {
        Deno.removeSync(this.#path);
      }
    } catch {
      // Best effort: a vanished or unremovable file is not worth failing close() for.
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Listens on `unix:PATH`. The socket file is owner-only (0600) from the moment
 * it appears at PATH, so only this user can connect. A path holding anything but a socket is refused rather
 * than clobbered; a stale socket (nobody accepts on it) is replaced; a live one
 * fails with "address already in use". Failures reject with `listen-failed`.
 * Note that probing a socket for liveness connects to it once.
 */
export async function listenUnix(uri: string): Promise<Listener> {
  const path = parseUnixPath(uri);
  const address = `unix:${path}`;
  const failed = (reason: string, cause?: unknown) =>
    new TransportError("listen-failed", `Cannot listen on ${address}: ${reason}`, { cause });

  const long = tooLong(path);
  if (long) throw failed(long);

  let existing: Deno.FileInfo | null;
  try {
    existing = lstatOrNull(path);
  } catch (err) {
    throw failed(describeNetError(err), err);
  }
  if (existing && !existing.isSocket) {
    const kind = existing.isDirectory
      ? "a directory"
      : existing.isFile
      ? "a regular file"
      : "a non-socket file";
    throw failed(`${path} already exists and is ${kind}; refusing to replace it`);
  }
  if (existing) {
    let live: Deno.UnixConn | undefined;
    try {
      live = await Deno.connect({ transport: "unix", path });
    } catch (err) {
      // Refused: a stale socket nobody accepts on. NotFound: it vanished meanwhile.
      const stale = err instanceof Deno.errors.ConnectionRefused ||
        err instanceof Deno.errors.NotFound;
      if (!stale) throw failed(describeNetError(err), err);
    }
    if (live) {
      live.close();
      throw failed("address already in use (another process is listening on this socket)");
    }
    try {
      Deno.removeSync(path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) {
        throw failed(`cannot remove the stale socket: ${describeNetError(err)}`, err);
      }
    }
  }

  const listener = bindPrivately(path, failed);
  try {
    return new UnixListener(listener, path, Deno.lstatSync(path));
  } catch (err) {
    listener.close();
    throw failed(describeNetError(err), err);
  }
}

/**
 * Binds a listening socket that appears at `path` already chmod 0600.
 *
 * Deno's UnixListener unlinks its bound *path* (whatever file is there by then)
 * when the resource is dropped, which is deferred while an accept() is pending:
 * a quick close-then-listen on the same path would see its new socket deleted.
 * So the socket is bound under a private temporary name beside `path`, made
 * owner-only, hard-linked to `path` (link() never replaces an existing file) and
 * the temporary name removed: Deno's unlink then hits a name that is long gone,
 * and `path` is never reachable with looser permissions.
 */
function bindPrivately(
  path: string,
  failed: (reason: string, cause?: unknown) => TransportError,
): Deno.UnixListener {
  const dir = path.slice(0, path.lastIndexOf("/") + 1);
  const suffix = crypto.getRandomValues(new Uint32Array(2)).reduce(
    (a, n) => a + n.toString(36),
    "",
  );
  const temp = `${dir}.ferry-${suffix}`;
  if (tooLong(temp)) return bindInPlace(path, failed); // no room for a temporary name

  let listener: Deno.UnixListener;
  try {
    listener = Deno.listen({ transport: "unix", path: temp });
  } catch (err) {
    throw failed(describeNetError(err), err);
  }
  try {
    Deno.chmodSync(temp, 0o600);
  } catch (err) {
    listener.close();
    throw failed(`cannot restrict the socket to its owner: ${describeNetError(err)}`, err);
  }
  try {
    Deno.linkSync(temp, path);
  } catch (err) {
    listener.close();
    if (err instanceof Deno.errors.AlreadyExists) {
      throw failed("address already in use (the path was created by someone else meanwhile)", err);
    }
    throw failed(describeNetError(err), err);
  } finally {
    try {
      Deno.removeSync(temp);
    } catch {
      // Already gone (Deno removed it on close above).
    }
  }
  return listener;
}

/** Fallback when a temporary name would not fit in sun_path: bind `path`, then chmod 0600. */
function bindInPlace(
  path: string,
  failed: (reason: string, cause?: unknown) => TransportError,
): Deno.UnixListener {
  let listener: Deno.UnixListener;
  try {
    listener = Deno.listen({ transport: "unix", path });
  } catch (err) {
    throw failed(describeNetError(err), err);
  }
  try {
    Deno.chmodSync(path, 0o600);
  } catch (err) {
    listener.close();
    throw failed(`cannot restrict the socket to its owner: ${describeNetError(err)}`, err);
  }
  return listener;
}
