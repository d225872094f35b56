/**
 * ferry's transports: parse a migration URI and open a byte {@link Channel} or
 * {@link Listener} for it. The engine only sees the {@link Transports} interface;
 * {@link createTransports} is the real one, {@link MemoryTransports} the test one.
 * @module
 */
import { connectTcp, listenTcp } from "./tcp.ts";
import { type Channel, type Listener, TransportError, type Transports } from "./transport.ts";
import { connectUnix, listenUnix } from "./unix.ts";
import { type MigrationUri, parseUri } from "./uri.ts";

export * from "./transport.ts";
export * from "./uri.ts";
export { connectTcp, listenTcp } from "./tcp.ts";
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

function notImplemented(scheme: MigrationUri["scheme"]): TransportError {
  return new TransportError(
    "transport-unavailable",
    `The ${scheme}: transport is not implemented yet; use tcp: or unix:`,
  );
}

/** Throws the TransportError explaining why a scheme other than tcp:/unix: cannot be used. */
function refuse(uri: MigrationUri, allowExec: boolean): never {
  switch (uri.scheme) {
    case "exec":
      if (!allowExec) {
        throw new TransportError(
          "exec-disabled",
          "The exec: transport is disabled on this server: it runs shell commands, " +
            "so ferry must be started with --allow-exec to use it",
        );
      }
      throw notImplemented("exec");
    default:
      throw notImplemented(uri.scheme);
  }
}

/**
 * Builds the real {@link Transports}: parses each URI with {@link parseUri}
 * (bad URIs and unknown schemes fail there, with `bad-uri` / `unknown-protocol`)
 * and dispatches tcp: and unix: to their transports. `exec:` fails with
 * `exec-disabled` unless `allowExec`; exec:, fd: and file: otherwise fail with
 * `transport-unavailable` until they are implemented. `validate(uri)` raises the
 * same errors synchronously without opening anything.
 */
export function createTransports(options: TransportsOptions = {}): Transports {
  const allowExec = options.allowExec ?? false;
  return {
    validate(uri: string): void {
      const parsed = parseUri(uri);
      if (parsed.scheme !== "tcp" && parsed.scheme !== "unix") refuse(parsed, allowExec);
    },
    connect(uri: string, signal?: AbortSignal): Promise<Channel> {
      try {
        const parsed = parseUri(uri);
        if (parsed.scheme === "tcp") return connectTcp(uri, signal);
        if (parsed.scheme === "unix") return connectUnix(uri, signal);
        refuse(parsed, allowExec);
      } catch (err) {
        return Promise.reject(err);
      }
    },
    listen(uri: string): Promise<Listener> {
      try {
        const parsed = parseUri(uri);
        if (parsed.scheme === "tcp") return listenTcp(uri);
        if (parsed.scheme === "unix") return listenUnix(uri);
        refuse(parsed, allowExec);
      } catch (err) {
        return Promise.reject(err);
      }
    },
  };
}
