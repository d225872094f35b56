/**
 * Deno has no API for a socket's buffer sizes, and a unix stream socket keeps the
 * kernel default send buffer (net.core.wmem_default, ~208 KiB on Linux): a 4 MiB
 * stream buffer then goes out in ~20 partial writes, each waiting for the peer to
 * be scheduled. This module raises it through libc's `setsockopt` when ferry runs
 * with FFI permission (`--allow-ffi`), which roughly halves a 1 GiB unix
 * migration here (BENCHMARKS.md). Without the permission, or off Linux, it does
 * nothing and the transport works as before.
 *
 * A Deno connection does not expose its file descriptor, so the function raises
 * every unix stream socket of the process whose send buffer is smaller: a bigger
 * buffer only lets a writer queue more, which is harmless for ferry's other unix
 * sockets (an incoming stream's return path).
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

/** True when this process may call libc and list its descriptors (Linux, `--allow-ffi`). */
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
 * Raises the send buffer of every unix stream socket of this process that has
 * less than `bytes` to `bytes`. Returns the descriptors raised (empty when
 * there was none, or when FFI is not allowed here).
 */
export function raiseUnixSendBuffers(bytes = UNIX_SEND_BUFFER): number[] {
  if (!available()) return [];
  let lib;
  try {
    lib = Deno.dlopen("libc.so.6", {
      setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
      getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
    });
  } catch {
    return [];
  }
  try {
    const value = new Int32Array(1);
    const length = new Uint32Array(1);
    const valueBytes = new Uint8Array(value.buffer);
    const lengthBytes = new Uint8Array(length.buffer);
    const get = (fd: number, option: number): number | null => {
      length[0] = 4;
      const rc = lib.symbols.getsockopt(fd, SOL_SOCKET, option, valueBytes, lengthBytes);
      return rc === 0 ? value[0] : null;
    };
    const raised: number[] = [];
    for (const entry of Deno.readDirSync("/proc/self/fd")) {
      const fd = Number(entry.name);
      // A descriptor that is not a socket fails getsockopt with ENOTSOCK.
      if (get(fd, SO_DOMAIN) !== AF_UNIX || get(fd, SO_TYPE) !== SOCK_STREAM) continue;
      // The kernel reports twice what was set: compare with the doubled request.
      if ((get(fd, SO_SNDBUF) ?? 0) >= 2 * bytes) continue;
      value[0] = bytes;
      if (lib.symbols.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, valueBytes, 4) === 0) raised.push(fd);
    }
    return raised;
  } catch {
    return [];
  } finally {
    lib.close();
  }
}
