/**
 * The `fd:N` transport: a file descriptor ferry inherited from whoever started
 * it — a shell redirection (`3>snap.bin`, `3<snap.bin`, `3<&0`), a pipe between
 * two processes, a socket or file opened by a supervisor.
 *
 * Deno 2 has no API to wrap a raw descriptor, so ferry goes through Linux's
 * /proc: it checks `/proc/self/fd/N` and `/proc/self/fdinfo/N`, then
 *  - a regular file, an anonymous pipe or a character device is re-opened
 *    through `/proc/self/fd/N` (a file at the descriptor's current position, in
 *    append mode if it was opened that way);
 *  - a socket cannot be re-opened that way (ENXIO), and re-opening a named pipe
 *    (mkfifo) blocks for good once the process at the other end is gone, so
 *    both are adopted with `node:net`'s `new Socket({ fd })` instead.
 * When the stream ends or fails, a pipe or socket descriptor N itself is closed,
 * so the process on the other end sees end of file at once.
 *
 * Only inherited descriptors are accepted: N must be 3 or above (0–2 are ferry's
 * console) and must not be close-on-exec (every descriptor Deno opens itself is).
 *
 * Deno guards every path under /proc/self (and /dev/fd) behind --allow-all, so
 * fd: needs ferry to run with `-A`; otherwise it answers `transport-unavailable`
 * saying so.
 * @module
 */
import type * as NodeNet from "node:net";
import { FsChannel, SYNC_EVERY_BYTES } from "./fs_channel.ts";
import { NodeSocketChannel } from "./node_socket_channel.ts";
import { type Channel, type Listener, TransportError } from "./transport.ts";
import { parseUri } from "./uri.ts";

const O_ACCMODE = 0o3;
const O_WRONLY = 0o1;
const O_RDWR = 0o2;
const O_APPEND = 0o2000;
const O_CLOEXEC = 0o2000000;

/**
 * What kind of object an inherited descriptor refers to: a regular file, an
 * anonymous pipe (`|`), a named pipe (mkfifo), a socket, or anything else
 * (a character device).
 */
export type FdKind = "file" | "pipe" | "fifo" | "socket" | "device";

/** What ferry learned about an inherited descriptor from /proc. */
export interface FdInfo {
  readonly fd: number;
  readonly kind: FdKind;
  /** Where `/proc/self/fd/N` points: a path, `pipe:[ino]`, `socket:[ino]`. */
  readonly target: string;
  readonly readable: boolean;
  readonly writable: boolean;
  /** Opened with O_APPEND (e.g. `3>>log`). */
  readonly append: boolean;
  /** The descriptor's file position (meaningful for regular files). */
  readonly position: number;
}

function parseFd(uri: string): number {
  const parsed = parseUri(uri);
  if (parsed.scheme !== "fd") {
    throw new TransportError("bad-uri", `Invalid migration URI "${uri}": expected fd:N`);
  }
  return parsed.fd;
}

function badFd(fd: number, why: string, cause?: unknown): TransportError {
  return new TransportError("bad-fd", `Cannot use fd:${fd}: ${why}`, { cause });
}

/**
 * Checks that descriptor `fd` was inherited and is open, and describes it.
 * Throws a `bad-fd` TransportError naming it otherwise: not open, one of 0–2,
 * or one of Deno's own descriptors.
 */
export function inspectFd(fd: number): FdInfo {
  if (fd <= 2) {
    throw badFd(
      fd,
      "descriptors 0, 1 and 2 are ferry's stdin, stdout and stderr; hand the stream " +
        "on descriptor 3 or above (e.g. 3<snap.bin, 3>snap.bin or 3<&0 in the shell)",
    );
  }
  let target: string;
  let fdinfo: string;
  try {
    target = Deno.readLinkSync(`/proc/self/fd/${fd}`);
    fdinfo = Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw badFd(
        fd,
        "this descriptor is not open in ferry (start ferry with it, e.g. 3>snap.bin in the shell)",
        err,
      );
    }
    if (err instanceof Deno.errors.NotCapable) {
      throw new TransportError(
        "transport-unavailable",
        `Cannot use fd:${fd}: fd: needs ferry to run with --allow-all (deno run -A main.ts …), ` +
          "because Deno only lets a fully trusted process reach /proc/self/fd, its one way " +
          "to an inherited descriptor",
        { cause: err },
      );
    }
    throw new TransportError(
      "transport-unavailable",
      `Cannot inspect fd:${fd} through /proc (fd: needs Linux): ${(err as Error).message}`,
      { cause: err },
    );
  }
  const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(fdinfo)?.[1] ?? "0", 8);
  const position = Number(/^pos:\s*(\d+)/m.exec(fdinfo)?.[1] ?? "0");
  if (flags & O_CLOEXEC) {
    throw badFd(fd, `this descriptor was not inherited: it is one of Deno's own (${target})`);
  }
  let stat: Deno.FileInfo;
  try {
    stat = Deno.statSync(`/proc/self/fd/${fd}`);
  } catch (err) {
    throw badFd(fd, (err as Error).message, err);
  }
  if (stat.isDirectory) throw badFd(fd, `it is a directory (${target})`);
  const kind: FdKind = stat.isFile
    ? "file"
    : stat.isFifo
    ? (target.startsWith("pipe:") ? "pipe" : "fifo")
    : stat.isSocket
    ? "socket"
    : "device";
  const access = flags & O_ACCMODE;
  return {
    fd,
    kind,
    target,
    readable: access !== O_WRONLY,
    writable: access === O_WRONLY || access === O_RDWR,
    append: (flags & O_APPEND) !== 0,
    position,
  };
}

let nodeNet: Promise<typeof NodeNet> | undefined;

/** node:net, imported on first use only: it takes ~0.2 s to load, too much for every ferry start. */
function loadNodeNet(): Promise<typeof NodeNet> {
  return nodeNet ??= import("node:net");
}

/**
 * Closes inherited descriptor `fd` itself (not just ferry's re-opened copy), so
 * the other end of a pipe sees end of file. Deno has no close(fd); node:net's
 * socket adopts a pipe descriptor and closes it on destroy().
 */
function closeInherited(info: FdInfo, net: typeof NodeNet): void {
  try {
    new net.Socket({ fd: info.fd, readable: false, writable: false }).destroy();
  } catch {
    // Not adoptable: it stays open until ferry exits.
  }
}

/** Opens descriptor `info.fd` for one direction as a {@link Channel}. */
async function openFd(info: FdInfo, direction: "read" | "write"): Promise<Channel> {
  const peer = `fd:${info.fd}`;
  // Pipes, FIFOs and sockets need node:net (to close or to adopt the descriptor).
  const adopt = info.kind === "socket" || info.kind === "fifo";
  const net = adopt || info.kind === "pipe" ? await loadNodeNet() : null;
  if (net && adopt) {
    try {
      const socket = new net.Socket({
        fd: info.fd,
        readable: direction === "read",
        writable: direction === "write",
        allowHalfOpen: true,
      });
      return new NodeSocketChannel(socket, peer, direction);
    } catch (err) {
      throw badFd(info.fd, `cannot adopt ${info.target} (${(err as Error).message})`, err);
    }
  }
  let file: Deno.FsFile;
  try {
    file = await Deno.open(
      `/proc/self/fd/${info.fd}`,
      direction === "read" ? { read: true } : { write: true, append: info.append },
    );
  } catch (err) {
    throw badFd(info.fd, `cannot open ${info.target}: ${(err as Error).message}`, err);
  }
  try {
    if (info.kind === "file" && !info.append && info.position > 0) {
      await file.seek(info.position, Deno.SeekMode.Start);
    }
  } catch (err) {
    file.close();
    throw badFd(info.fd, `cannot seek ${info.target}: ${(err as Error).message}`, err);
  }
  const syncs = info.kind === "file" && direction === "write";
  return new FsChannel(file, peer, direction, {
    syncEvery: syncs ? SYNC_EVERY_BYTES : undefined,
    beforeClose: syncs ? (f) => f.sync() : undefined,
    // A file or device left open harms nobody; a pipe must close for its reader to see EOF.
    released: net ? () => closeInherited(info, net) : undefined,
  });
}

/**
 * Opens inherited descriptor `fd:N` for an outgoing migration. Rejects with a
 * `bad-fd` TransportError when N is not an inherited descriptor or is open
 * read-only. finish() fsyncs a regular file; for a pipe or socket it closes N,
 * so the reader sees end of file.
 */
export async function connectFd(uri: string, signal?: AbortSignal): Promise<Channel> {
  const fd = parseFd(uri);
  signal?.throwIfAborted();
  const info = inspectFd(fd);
  if (!info.writable) {
    throw badFd(fd, `it is open read-only (${info.target}); an outgoing migration writes it`);
  }
  return await openFd(info, "write");
}

/** A listener over an already opened descriptor; accept() hands the channel out once. */
class FdListener implements Listener {
  /** The one channel there will be. */
  readonly peers = "one" as const;
  #channel: Channel | null;
  #closed = false;

  constructor(channel: Channel, readonly address: string) {
    this.#channel = channel;
  }

  /** Returns the channel reading the descriptor (once). */
  accept(): Promise<Channel> {
    if (this.#closed) return Promise.reject(new Error(`Listener ${this.address} is closed`));
    const channel = this.#channel;
    if (!channel) return Promise.reject(new Error(`Listener ${this.address} was already accepted`));
    this.#channel = null;
    return Promise.resolve(channel);
  }

  /** Stops listening; closes the descriptor unless accept() handed it out. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#channel?.close();
    this.#channel = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens inherited descriptor `fd:N` for an incoming migration. Rejects with a
 * `bad-fd` TransportError when N is not an inherited descriptor or is open
 * write-only. The channel reads it to end of file (a file from its current
 * position).
 */
export async function listenFd(uri: string): Promise<Listener> {
  const fd = parseFd(uri);
  const info = inspectFd(fd);
  if (!info.readable) {
    throw badFd(fd, `it is open write-only (${info.target}); an incoming migration reads it`);
  }
  return new FdListener(await openFd(info, "read"), `fd:${fd}`);
}
