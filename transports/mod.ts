/**
 * ferry's transports: parse a migration URI and open a byte {@link Channel} or
 * {@link Listener} for it. The engine only sees the {@link Transports} interface;
 * {@link createTransports} is the real one, {@link MemoryTransports} the test one.
 * @module
 */
import { connectExec, listenExec } from "./exec.ts";
import { connectFd, inspectFd, listenFd } from "./fd.ts";
import { connectFile, listenFile } from "./file.ts";
import { connectTcp, listenTcp } from "./tcp.ts";
import { type Channel, type Listener, TransportError, type Transports } from "./transport.ts";
import { connectUnix, listenUnix } from "./unix.ts";
import { type MigrationUri, parseUri, type UriDirection } from "./uri.ts";

export * from "./transport.ts";
export * from "./uri.ts";
export { connectTcp, listenTcp } from "./tcp.ts";
export { connectExec, type ExecChannelHandle, listenExec } from "./exec.ts";
export { connectFd, type FdInfo, type FdKind, inspectFd, listenFd } from "./fd.ts";
export { connectFile, listenFile } from "./file.ts";
export { connectUnix, listenUnix, MAX_UNIX_PATH_BYTES } from "./unix.ts";
export {
  channelPair,
  DEFAULT_MEMORY_CAPACITY,
  MemoryChannel,
  MemoryListener,
  MemoryTransports,
} from "./memory.ts";

/** Options of {@link createTransports}. */
export interface TransportsOptions {
  /**
   * Whether `exec:` URIs may run shell commands. Off by default: exec: runs
   * arbitrary commands, so a server must opt in explicitly.
   */
  allowExec?: boolean;
}

/** Throws `exec-disabled` unless this ferry was started with --allow-exec. */
function checkExecAllowed(allowExec: boolean): void {
  if (!allowExec) {
    throw new TransportError(
      "exec-disabled",
      "The exec: transport is disabled on this server: it runs shell commands, " +
        "so ferry must be started with --allow-exec to use it",
    );
  }
}

/**
 * Builds the real {@link Transports}: parses each URI with {@link parseUri}
 * (bad URIs and unknown schemes fail there, with `bad-uri` / `unknown-protocol`)
 * and dispatches it to its transport: tcp:, unix:, exec: (`exec-disabled`
 * unless `allowExec`), fd: (`bad-fd` for a descriptor ferry did not inherit)
 * and file:. `validate(uri, direction)` raises those errors synchronously without
 * opening anything; `connect` and `listen` check their own direction (tcp: port 0
 * is `bad-uri` to connect to).
 */
export function createTransports(options: TransportsOptions = {}): Transports {
  const allowExec = options.allowExec ?? false;
  const check = (uri: string, direction?: UriDirection): MigrationUri => {
    const parsed = parseUri(uri, direction);
    if (parsed.scheme === "exec") checkExecAllowed(allowExec);
    if (parsed.scheme === "fd") inspectFd(parsed.fd);
    return parsed;
  };
  return {
    validate(uri: string, direction?: UriDirection): void {
      check(uri, direction);
    },
    connect(uri: string, signal?: AbortSignal): Promise<Channel> {
      try {
        switch (check(uri, "connect").scheme) {
          case "tcp":
            return connectTcp(uri, signal);
          case "unix":
            return connectUnix(uri, signal);
          case "exec":
            return connectExec(uri, signal);
          case "fd":
            return connectFd(uri, signal);
          case "file":
            return connectFile(uri, signal);
        }
      } catch (err) {
        return Promise.reject(err);
      }
    },
    listen(uri: string): Promise<Listener> {
      try {
        switch (check(uri, "listen").scheme) {
          case "tcp":
            return listenTcp(uri);
          case "unix":
            return listenUnix(uri);
          case "exec":
            return listenExec(uri);
          case "fd":
            return listenFd(uri);
          case "file":
            return listenFile(uri);
        }
      } catch (err) {
        return Promise.reject(err);
      }
    },
  };
}
