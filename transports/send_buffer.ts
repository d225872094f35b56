/**
 * Deno has no API for a socket's buffer sizes, and a unix stream socket keeps the
 * kernel default send buffer (net.core.wmem_default, ~208 KiB on Linux): a 4 MiB
 * stream buffer then goes out in ~20 partial writes, each waiting for the peer to
 * be scheduled. This module raises it through libc's `setsockopt` when ferry runs
 * with FFI permission (`--allow-ffi`), which cuts a 1 GiB unix migration by about
 * a third here (BENCHMARKS.md). Without the permission, or off Linux, it does
 * nothing and the transport works as before.
 *
 * A Deno connection does not expose its file descriptor, so the caller snapshots
 * the process's socket descriptors before connecting ({@link socketFds}) and hands
 * the snapshot back afterwards: the new unix stream sockets are the connection.
 * @module
 */

/** The send buffer ferry asks for (the kernel caps it at net.core.wmem_max and doubles it). */
export const UNIX_SEND_BUFFER = 4 << 20;

const SOL_SOCKET = 1;
const SO_TYPE = 3;
const SO_SNDBUF = 7;
const SO_DOMAIN = 39;
const AF_UNIX = 1;
const SOCK_STREAM = 1;

/** True when this process may call libc and read /proc (Linux, `--allow-ffi`). */
function available(): boolean {
  if (Deno.build.os !== "linux") return false;
  try {
    return Deno.permissions.querySync({ name: "ffi" }).state === "granted" &&
      Deno.permissions.querySync({ name: "read", path: "/proc/self/fd" }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * The descriptors of this process that are sockets, or null when the buffer
 * cannot be raised here anyway (no FFI permission, not Linux): then there is no
 * need to look.
 */
export function socketFds(): Set<number> | null {
  if (!available()) return null;
  const fds = new Set<number>();
  try {
    for (const entry of Deno.readDirSync("/proc/self/fd")) {
      try {
        if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`).startsWith("socket:")) {
          fds.add(Number(entry.name));
        }
      } catch {
        // Closed while we looked.
      }
    }
  } catch {
    return null;
  }
  return fds;
}

/**
 * Raises the send buffer of every unix stream socket that is in this process now
 * but was not in `before` (from {@link socketFds} just before the connect) to
 * `bytes`. Returns the size the kernel reports for the last one raised (it
 * doubles the request and caps it), or null when none was raised.
 */
export function raiseUnixSendBuffer(
  before: Set<number> | null,
  bytes = UNIX_SEND_BUFFER,
): number | null {
  if (before === null) return null;
  const now = socketFds();
  if (now === null) return null;
  const fresh = [...now].filter((fd) => !before.has(fd));
  if (fresh.length === 0) return null;
  let lib;
  try {
    lib = Deno.dlopen("libc.so.6", {
      setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
      getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
    });
  } catch {
    return null;
  }
  try {
    const value = new Int32Array(1);
    const length = new Uint32Array(1);
    const get = (fd: number, option: number): number | null => {
      length[0] = 4;
      const rc = lib.symbols.getsockopt(
        fd,
        SOL_SOCKET,
        option,
        new Uint8Array(value.buffer),
        new Uint8Array(length.buffer),
      );
      return rc === 0 ? value[0] : null;
    };
    let result: number | null = null;
    for (const fd of fresh) {
      if (get(fd, SO_DOMAIN) !== AF_UNIX || get(fd, SO_TYPE) !== SOCK_STREAM) continue;
      value[0] = bytes;
      if (
        lib.symbols.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, new Uint8Array(value.buffer), 4) === 0
      ) {
        result = get(fd, SO_SNDBUF);
      }
    }
    return result;
  } finally {
    lib.close();
  }
}
