/**
 * Deno has no API for a socket's buffer sizes, and a unix stream socket keeps the
 * kernel default send buffer (net.core.wmem_default, ~208 KiB on Linux): a 4 MiB
 * stream buffer then goes out in ~20 partial writes, each waiting for the peer to
 * be scheduled. This module raises it through libc's `setsockopt` when ferry runs
 * with FFI permission (`--allow-ffi`), which roughly halves a 1 GiB unix
 * migration here (BENCHMARKS.md). Without the permission, or off Linux, it does
 * nothing and the transport works as before.
 *
 * A Deno connection does not expose its file descriptor, so the socket is found
 * among the process's descriptors: the unix stream socket that did not exist before
 * the connect and whose peer address (`getpeername`) is the one the connection
 * reports; the newest (highest) such descriptor when there are several. Every other
 * socket of the process keeps its buffer. The descriptors are listed through libc
 * too: Deno lets only a fully trusted (`-A`) process read `/proc/self/fd`.
 * @module
 */

/**
 * The send buffer ferry asks for (the kernel caps it at net.core.wmem_max and
 * doubles it). 1 MiB measured best here: 4 MiB was no faster and let each write
 * hold the event loop longer (API p99 during a 1 GiB migration up to 31 ms
 * against 11–13 ms); 512 KiB was ~10 % slower.
 */
export const UNIX_SEND_BUFFER = 1 << 20;

const SOL_SOCKET = 1;
const SO_TYPE = 3;
const SO_SNDBUF = 7;
const SO_DOMAIN = 39;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
/** sizeof(struct sockaddr_un): a 2-byte family and a 108-byte path. */
const SOCKADDR_UN_BYTES = 110;
const FD_DIR = "/proc/self/fd";

/** Offset of d_name in glibc's struct dirent on 64-bit Linux (ino, off, reclen, type). */
const DIRENT_NAME = 19;

/** True when this process may call libc (Linux, `--allow-ffi`). */
function available(): boolean {
  if (Deno.build.os !== "linux") return false;
  try {
    return Deno.permissions.querySync({ name: "ffi" }).state === "granted";
  } catch {
    return false;
  }
}

/** `text` as a NUL-terminated C string. */
const cString = (text: string) => new TextEncoder().encode(`${text}\0`);

/** The libc calls this module makes, on reusable buffers. */
class Libc {
  readonly #lib = Deno.dlopen("libc.so.6", {
    setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
    getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
    getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    opendir: { parameters: ["buffer"], result: "pointer" },
    readdir: { parameters: ["pointer"], result: "pointer" },
    closedir: { parameters: ["pointer"], result: "i32" },
    readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  });
  readonly #value = new Int32Array(1);
  readonly #valueBytes = new Uint8Array(this.#value.buffer);
  readonly #length = new Uint32Array(1);
  readonly #lengthBytes = new Uint8Array(this.#length.buffer);
  readonly #address = new Uint8Array(SOCKADDR_UN_BYTES);
  readonly #link = new Uint8Array(64);

  /** An int socket option of `fd`; null when it has none (e.g. ENOTSOCK). */
  get(fd: number, option: number): number | null {
    this.#length[0] = 4;
    const rc = this.#lib.symbols.getsockopt(
      fd,
      SOL_SOCKET,
      option,
      this.#valueBytes,
      this.#lengthBytes,
    );
    return rc === 0 ? this.#value[0] : null;
  }

  /** Sets SO_SNDBUF of `fd`; true on success. */
  setSendBuffer(fd: number, bytes: number): boolean {
    this.#value[0] = bytes;
    return this.#lib.symbols.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, this.#valueBytes, 4) === 0;
  }

  /** True when `fd` is a unix stream socket. */
  isUnixStream(fd: number): boolean {
    return this.get(fd, SO_DOMAIN) === AF_UNIX && this.get(fd, SO_TYPE) === SOCK_STREAM;
  }

  /** The filesystem path `fd`'s peer is bound to; null when unconnected, unnamed or abstract. */
  peerPath(fd: number): string | null {
    this.#length[0] = SOCKADDR_UN_BYTES;
    const rc = this.#lib.symbols.getpeername(fd, this.#address, this.#lengthBytes);
    if (rc !== 0) return null;
    const path = this.#address.subarray(2, Math.min(this.#length[0], SOCKADDR_UN_BYTES));
    const nul = path.indexOf(0);
    if (path.length === 0 || nul === 0) return null;
    return new TextDecoder().decode(nul < 0 ? path : path.subarray(0, nul));
  }

  /** The sockets open now: descriptor → kernel identity (`socket:[inode]`). */
  sockets(): Map<number, string> {
    const { opendir, readdir, closedir, readlink } = this.#lib.symbols;
    const names: string[] = [];
    const dir = opendir(cString(FD_DIR));
    if (dir === null) return new Map();
    try {
      for (let entry; (entry = readdir(dir)) !== null;) {
        names.push(new Deno.UnsafePointerView(entry).getCString(DIRENT_NAME));
      }
    } finally {
      closedir(dir);
    }
    const sockets = new Map<number, string>();
    for (const name of names) {
      if (!/^[0-9]+$/.test(name)) continue; // "." and ".."
      const n = Number(
        readlink(cString(`${FD_DIR}/${name}`), this.#link, BigInt(this.#link.length)),
      );
      // Closed meanwhile (the directory's own descriptor, among others): n < 0.
      const link = n > 0 ? new TextDecoder().decode(this.#link.subarray(0, n)) : "";
      if (link.startsWith("socket:")) sockets.set(Number(name), link);
    }
    return sockets;
  }

  close(): void {
    this.#lib.close();
  }
}

/**
 * Runs `use` with libc loaded (and unloaded after: a library kept loaded would count
 * as a leaked resource in every test that connects); `fallback` when FFI is not
 * allowed here or anything fails.
 */
function withLibc<T>(use: (libc: Libc) => T, fallback: T): T {
  if (!available()) return fallback;
  let libc: Libc;
  try {
    libc = new Libc();
  } catch {
    return fallback;
  }
  try {
    return use(libc);
  } catch {
    return fallback;
  } finally {
    libc.close();
  }
}

/**
 * The sockets this process has open now, by kernel identity (`socket:[inode]`, so
 * a descriptor number reused meanwhile still counts as new). Taken just before a
 * unix connect and handed to {@link raiseSendBuffer}, it tells the new socket from
 * older ones. Empty when FFI is not allowed (nothing will be raised then).
 */
export function openSockets(): ReadonlySet<string> {
  return withLibc((libc) => new Set(libc.sockets().values()), new Set<string>());
}

/**
 * Raises the send buffer of the unix stream socket this process just connected to
 * `peer` (the peer address the connection reports: the path connected to, or the
 * name the listener was bound under when it was linked there): among the sockets
 * not in `before` whose peer is `peer` and whose buffer is still smaller, the one
 * with the highest descriptor. Returns that descriptor, or null when there was
 * none or FFI is not allowed here.
 */
export function raiseSendBuffer(
  peer: string,
  before: ReadonlySet<string>,
  bytes = UNIX_SEND_BUFFER,
): number | null {
  return withLibc((libc) => {
    const fresh = [...libc.sockets()]
      .filter(([, link]) => !before.has(link))
      .map(([fd]) => fd)
      .sort((a, b) => b - a);
    for (const fd of fresh) {
      if (!libc.isUnixStream(fd) || libc.peerPath(fd) !== peer) continue;
      // The kernel reports twice what was set: compare with the doubled request. A
      // socket already raised is another connect's to the same peer.
      if ((libc.get(fd, SO_SNDBUF) ?? 0) >= 2 * bytes) continue;
      return libc.setSendBuffer(fd, bytes) ? fd : null;
    }
    return null;
  }, null);
}

/**
 * Loads libc and walks the descriptors once, raising nothing, so the first unix
 * migration does not pay for the first load (~6 ms) in its setup.
 */
export function warmUpSendBuffer(): void {
  withLibc((libc) => {
    for (const fd of libc.sockets().keys()) {
      if (libc.isUnixStream(fd)) libc.peerPath(fd);
    }
  }, undefined);
}
