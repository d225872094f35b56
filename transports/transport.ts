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
  /** Stops listening (and removes a unix socket file it created). Idempotent. */
  close(): void;
}

/** Opens channels for migration URIs; injected into the engine so tests can swap it. */
export interface Transports {
  /**
   * Checks synchronously that `uri` parses and that this ferry may use it (e.g.
   * exec: needs --allow-exec), throwing a TransportError; nothing is opened. With
   * a `direction`, also that the URI is valid that way (no tcp: port 0 to connect).
   */
  validate(uri: string, direction?: "connect" | "listen"): void;
  /** Connects to a destination for an outgoing migration. */
  connect(uri: string, signal?: AbortSignal): Promise<Channel>;
  /** Binds a listener for an incoming migration. */
  listen(uri: string): Promise<Listener>;
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
      | "bad-fd"
      | "connect-failed"
      | "listen-failed",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
