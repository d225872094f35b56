/**
 * The one interface between the migration engine and the wire. A Channel moves
 * bytes in one or both directions; the engine never sees sockets, pipes or files.
 */
export interface Channel extends Disposable {
  /** Writes every byte of `chunk`; rejects once the channel is closed or the peer is gone. */
  write(chunk: Uint8Array): Promise<void>;
  /** Reads up to `buf.length` bytes into `buf`; resolves `null` at end of stream. */
  read(buf: Uint8Array): Promise<number | null>;
  /**
   * Finishes a successful outgoing stream: flushes what the transport buffers and
   * waits for it to be accepted (for exec:, the child's exit). Then closes.
   */
  finish(): Promise<void>;
  /** Closes both directions at once; pending reads and writes reject. Idempotent. */
  close(): void;
  /** True once close() ran or the channel failed. */
  readonly closed: boolean;
  /** Who is on the other end, for logs and status ("tcp:127.0.0.1:4444"). */
  readonly peer: string;
}

/** A bound endpoint waiting for one incoming migration stream. */
export interface Listener extends Disposable {
  /** The URI the peer should connect to, with the real port when 0 was asked for. */
  readonly address: string;
  /**
   * `many` when anyone may connect, any number of times (a socket: the destination
   * drops a peer that does not start a stream and goes on listening); `one` when
   * accept() hands out the only channel there will be (exec:, fd:, file:).
   */
  readonly peers: "one" | "many";
  /** Resolves with the next connection; rejects once the listener is closed. */
  accept(): Promise<Channel>;
  /**
   * Present when peers must prove who they are before their stream is read (the
   * migration secret's challenge, transports/peer_auth.ts): resolves once `channel`'s
   * peer proved it, rejects saying why it did not. The destination's gate calls it
   * within its header deadline, before it reads a byte of the stream.
   */
  authenticate?(channel: Channel): Promise<void>;
  /** Stops listening (and removes a unix socket file it created). Idempotent. */
  close(): void;
}

/**
 * TLS on `tcp:` (docs/ARCHITECTURE.md, "Transport security"): file paths and the name the
 * destination's certificate must carry. A destination needs `certFile` and
 * `keyFile`; a source verifies against `caFile` (added to Deno's built-in roots).
 */
export interface TlsOptions {
  /** PEM certificate chain the destination presents. */
  readonly certFile?: string;
  /** PEM private key of that certificate. */
  readonly keyFile?: string;
  /** PEM CA bundle the source trusts for the destination's certificate. */
  readonly caFile?: string;
  /** The name the destination's certificate must be for (default: the URI's host). */
  readonly hostname?: string;
}

/**
 * How a migration's channel is protected, from the engine's parameters. Each
 * part applies where it can: TLS to `tcp:`, the secret to sockets (`tcp:`,
 * `unix:`), the snapshot key to one-way streams (`file:`, `exec:`, `fd:`).
 */
export interface ChannelSecurity {
  /** TLS on tcp:. */
  readonly tls?: TlsOptions;
  /** File holding the secret both ends of a socket migration prove they know. */
  readonly secretFile?: string;
  /** File holding the key a one-way stream is encrypted with (transports/sealed.ts). */
  readonly snapshotKeyFile?: string;
}

/** Opens channels for migration URIs; injected into the engine so tests can swap it. */
export interface Transports {
  /**
   * Checks synchronously that `uri` parses and that this ferry may use it (e.g.
   * exec: needs --allow-exec), throwing a TransportError; nothing is opened. With
   * a `direction`, also that the URI is valid that way (no tcp: port 0 to connect).
   */
  validate(uri: string, direction?: "connect" | "listen"): void;
  /**
   * Connects to a destination for an outgoing migration, with TLS, the secret's
   * proof and encryption as `security` asks.
   */
  connect(uri: string, signal?: AbortSignal, security?: ChannelSecurity): Promise<Channel>;
  /** Binds a listener for an incoming migration, protected as `security` asks. */
  listen(uri: string, security?: ChannelSecurity): Promise<Listener>;
}

/** Why a transport could not be opened; `code` is the API error code. */
export class TransportError extends Error {
  /** Always "TransportError", so logs and `instanceof`-free checks can tell it apart. */
  override readonly name = "TransportError";
  /** `code` is the API error code, `message` a sentence for people, `options.cause` the OS error. */
  constructor(
    readonly code:
      | "bad-uri"
      | "unknown-protocol"
      | "transport-unavailable"
      | "exec-disabled"
      | "insecure-migration"
      | "bad-fd"
      | "connect-failed"
      | "listen-failed",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
