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
import { connectTls, listenTls } from "./tls.ts";
import {
  type Channel,
  type ChannelSecurity,
  type Listener,
  TransportError,
  type Transports,
} from "./transport.ts";
import { connectUnix, listenUnix } from "./unix.ts";
import { isLoopbackHost, type MigrationUri, parseUri, type UriDirection } from "./uri.ts";
import { loadSecret, type MigrationSecret, proveSecret, SecretListener } from "./peer_auth.ts";
import { loadSnapshotKey, SealingChannel, type SnapshotKey, UnsealingListener } from "./sealed.ts";

export * from "./transport.ts";
export * from "./uri.ts";
export { connectTcp, listenTcp } from "./tcp.ts";
export { connectTls, listenTls } from "./tls.ts";
export {
  AUTH_MAGIC,
  checkSecret,
  loadSecret,
  type MigrationSecret,
  PeerAuthError,
  proveSecret,
  SecretListener,
} from "./peer_auth.ts";
export {
  loadSnapshotKey,
  SEAL_CHUNK_BYTES,
  SEAL_MAGIC,
  SealError,
  SealingChannel,
  type SnapshotKey,
  UnsealingChannel,
  UnsealingListener,
} from "./sealed.ts";
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
  /**
   * Whether a destination may listen in plaintext on a tcp: address that is not
   * loopback (`--insecure-migration`). Off by default: without TLS such a listen is
   * refused with `insecure-migration`, since the stream carries the guest's memory.
   */
  insecureMigration?: boolean;
}

/**
 * Throws `insecure-migration` for a plaintext listen on a tcp: host that is not
 * loopback, unless allowed.
 */
function checkPlaintextAllowed(
  parsed: MigrationUri,
  uri: string,
  security: ChannelSecurity,
  allowed: boolean,
): void {
  if (parsed.scheme !== "tcp" || security.tls || allowed || isLoopbackHost(parsed.host)) return;
  throw new TransportError(
    "insecure-migration",
    `Refusing to listen on ${uri} without TLS: ${parsed.host} is not a loopback address, and ` +
      "a plaintext stream shows the guest's memory to anyone on the network. Set tls_cert and " +
      "tls_key (--tls-cert, --tls-key), listen on loopback or a unix: socket, or start ferry " +
      "with --insecure-migration on a network you trust",
  );
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
 * Reads the secret and the snapshot key `security` names that `scheme` uses (the
 * secret on sockets, the key on one-way streams), before anything is opened; an
 * unusable file rejects with a TransportError of `code` naming it.
 */
async function loadKeys(
  scheme: MigrationUri["scheme"],
  security: ChannelSecurity,
  code: "connect-failed" | "listen-failed",
  uri: string,
): Promise<{ secret?: MigrationSecret; snapshotKey?: SnapshotKey }> {
  const socket = scheme === "tcp" || scheme === "unix";
  try {
    if (socket && security.secretFile !== undefined) {
      return { secret: await loadSecret(security.secretFile) };
    }
    if (!socket && security.snapshotKeyFile !== undefined) {
      return { snapshotKey: await loadSnapshotKey(security.snapshotKeyFile) };
    }
    return {};
  } catch (err) {
    const verb = code === "connect-failed" ? "connect to" : "listen on";
    throw new TransportError(code, `Cannot ${verb} ${uri}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * Builds the real {@link Transports}: parses each URI with {@link parseUri}
 * (bad URIs and unknown schemes fail there, with `bad-uri` / `unknown-protocol`)
 * and dispatches it to its transport: tcp: (with TLS when `security.tls` is
 * given), unix:, exec: (`exec-disabled` unless `allowExec`), fd: (`bad-fd` for a
 * descriptor ferry did not inherit) and file:. On sockets a `security.secretFile`
 * adds the migration secret's exchange (transports/peer_auth.ts); on one-way
 * streams a `security.snapshotKeyFile` encrypts them (transports/sealed.ts).
 * `validate(uri, direction)` raises URI errors synchronously without opening
 * anything; `connect` and `listen` check their own direction (tcp: port 0 is
 * `bad-uri` to connect to).
 */
export function createTransports(options: TransportsOptions = {}): Transports {
  const allowExec = options.allowExec ?? false;
  const check = (uri: string, direction?: UriDirection): MigrationUri => {
    const parsed = parseUri(uri, direction);
    if (parsed.scheme === "exec") checkExecAllowed(allowExec);
    if (parsed.scheme === "fd") inspectFd(parsed.fd);
    return parsed;
  };
  const open = (
    parsed: MigrationUri,
    uri: string,
    signal?: AbortSignal,
    tls?: ChannelSecurity["tls"],
  ) => {
    switch (parsed.scheme) {
      case "tcp":
        return tls ? connectTls(uri, tls, signal) : connectTcp(uri, signal);
      case "unix":
        return connectUnix(uri, signal);
      case "exec":
        return connectExec(uri, signal);
      case "fd":
        return connectFd(uri, signal);
      case "file":
        return connectFile(uri, signal);
    }
  };
  const bind = (parsed: MigrationUri, uri: string, tls?: ChannelSecurity["tls"]) => {
    switch (parsed.scheme) {
      case "tcp":
        return tls ? listenTls(uri, tls) : listenTcp(uri);
      case "unix":
        return listenUnix(uri);
      case "exec":
        return listenExec(uri);
      case "fd":
        return listenFd(uri);
      case "file":
        return listenFile(uri);
    }
  };
  return {
    validate(uri: string, direction?: UriDirection): void {
      check(uri, direction);
    },
    async connect(
      uri: string,
      signal?: AbortSignal,
      security: ChannelSecurity = {},
    ): Promise<Channel> {
      const parsed = check(uri, "connect");
      const { secret, snapshotKey } = await loadKeys(
        parsed.scheme,
        security,
        "connect-failed",
        uri,
      );
      const channel = await open(parsed, uri, signal, security.tls);
      if (snapshotKey) return new SealingChannel(channel, snapshotKey);
      if (secret) {
        try {
          await proveSecret(channel, secret, signal);
        } catch (err) {
          channel.close();
          throw err;
        }
      }
      return channel;
    },
    async listen(uri: string, security: ChannelSecurity = {}): Promise<Listener> {
      const parsed = check(uri, "listen");
      checkPlaintextAllowed(parsed, uri, security, options.insecureMigration ?? false);
      const { secret, snapshotKey } = await loadKeys(parsed.scheme, security, "listen-failed", uri);
      const listener = await bind(parsed, uri, security.tls);
      if (snapshotKey) return new UnsealingListener(listener, snapshotKey);
      if (secret) return new SecretListener(listener, secret);
      return listener;
    },
  };
}
