/**
 * The destination's door (docs/ARCHITECTURE.md, "The incoming port"): on a socket
 * anyone can connect to, the first connection is not necessarily the source. Each
 * new connection must send a savevm header (magic and version) within a short
 * deadline; one that sends anything else, or nothing, is dropped, and listening
 * goes on. The first good one is the stream; connections checked alongside it are
 * dropped, and the caller then closes the listener, so later ones are refused.
 *
 * When the listener asks peers to prove who they are (`Listener.authenticate`: the
 * migration secret, transports/peer_auth.ts), that proof comes first, within the
 * same deadline, and a peer that fails it is dropped like one without a header: no
 * byte of its stream is read, and the guest is not touched. A TLS listener's
 * handshake runs on the first read, inside the deadline too. A peer that spoke but
 * was refused (a wrong secret, or a secret offered to a destination without one)
 * is told why in a return-path failure message before the connection closes.
 * @module
 */
import { AUTH_MAGIC, PeerAuthError } from "../transports/peer_auth.ts";
import type { Channel, Listener } from "../transports/transport.ts";
import type { Clock } from "./clock.ts";
import { QEVM_MAGIC, QEVM_VERSION } from "./format/constants.ts";
import { errorMessage } from "./return_path.ts";

/** How long a new connection has to send the stream header, ms. */
export const HEADER_DEADLINE_MS = 5000;
/** Connections checked at once; more are dropped at once. */
export const MAX_CANDIDATES = 16;
/** The stream header: magic and version, 8 bytes. */
const HEADER_BYTES = 8;

/** Options of {@link acceptStream}. */
export interface GateOptions {
  readonly clock: Clock;
  /** Aborts the wait (the incoming migration was cancelled). */
  readonly signal: AbortSignal;
  /** ms a connection has to send the header (default {@link HEADER_DEADLINE_MS}). */
  readonly deadlineMs?: number;
  /** Told about every connection dropped, with why. */
  readonly onDropped?: (peer: string, why: string) => void;
  /**
   * Takes the connections that come once the stream started, instead of their
   * being dropped (multifd's page channels, docs/ARCHITECTURE.md, "Multifd"); the
   * caller then closes the listener when it needs no more.
   */
  readonly afterStream?: (ch: Channel) => void;
}

/**
 * The channel of the first connection that starts with a valid stream header
 * (the header is read again from it). A listener of `one` peer hands out its
 * channel unchecked: the loader judges it. Rejects when the listener closes or
 * `signal` aborts.
 */
export async function acceptStream(listener: Listener, options: GateOptions): Promise<Channel> {
  if (listener.peers === "one") return await listener.accept();
  const { clock, signal, onDropped } = options;
  const deadlineMs = options.deadlineMs ?? HEADER_DEADLINE_MS;
  const candidates = new Set<Channel>();
  const done = new AbortController();
  const stop = () => done.abort(signal.reason);
  signal.addEventListener("abort", stop, { once: true });
  try {
    return await new Promise<Channel>((resolve, reject) => {
      const drop = (ch: Channel, why: string) => {
        if (!candidates.delete(ch) && ch.closed) return; // dropped already
        ch.close();
        onDropped?.(ch.peer, why);
      };
      const authenticate = listener.authenticate?.bind(listener);
      const check = async (ch: Channel) => {
        const header = await readHeader(ch, clock, deadlineMs, done.signal, authenticate);
        if (done.signal.aborted) return drop(ch, "another connection started the stream first");
        if (typeof header === "string") return drop(ch, header);
        if ("refused" in header) {
          // The peer spoke: a failure message tells it why (a write to a gone peer fails).
          await ch.write(
            errorMessage(`the destination refused this connection: it ${header.refused}`),
          )
            .catch(() => {});
          return drop(ch, header.refused);
        }
        candidates.delete(ch);
        done.abort();
        for (const other of [...candidates]) {
          drop(other, "another connection started the stream first");
        }
        resolve(new PrefixedChannel(ch, header));
      };
      done.signal.addEventListener("abort", () => {
        const why = signal.aborted
          ? "the incoming migration was cancelled"
          : "another connection started the stream first";
        for (const ch of [...candidates]) drop(ch, why);
        if (signal.aborted) reject(signal.reason);
      }, { once: true });
      (async () => {
        for (;;) {
          const ch = await listener.accept();
          if (done.signal.aborted && options.afterStream && !signal.aborted) {
            options.afterStream(ch);
            continue;
          }
          if (done.signal.aborted) {
            ch.close();
            onDropped?.(ch.peer, "another connection started the stream first");
            continue;
          }
          if (candidates.size >= MAX_CANDIDATES) {
            ch.close();
            onDropped?.(ch.peer, `more than ${MAX_CANDIDATES} connections wait to start a stream`);
            continue;
          }
          candidates.add(ch);
          check(ch).catch((e) => drop(ch, (e as Error).message));
        }
      })().catch((e) => {
        if (!done.signal.aborted) reject(e);
      });
    });
  } finally {
    signal.removeEventListener("abort", stop);
    done.abort();
  }
}

/**
 * The 8 header bytes, or why the connection does not start a stream: a string,
 * or `{ refused }` when the peer should be told (see the module comment).
 * `authenticate`, when given, must resolve first.
 */
async function readHeader(
  ch: Channel,
  clock: Clock,
  deadlineMs: number,
  stop: AbortSignal,
  authenticate?: (ch: Channel) => Promise<void>,
): Promise<Uint8Array | string | { refused: string }> {
  const header = new Uint8Array(HEADER_BYTES);
  const timer = new AbortController();
  const onStop = () => timer.abort();
  stop.addEventListener("abort", onStop, { once: true });
  // A deadline watched, not a pause: a virtual clock does not move for it.
  const late = clock.until(clock.now() + deadlineMs, timer.signal).then(
    () => `sent no stream header within ${deadlineMs} ms`,
    () => "stopped",
  );
  try {
    if (authenticate) {
      const failed = await Promise.race([
        authenticate(ch).then(
          () => null,
          (e: unknown) =>
            e instanceof PeerAuthError ? { refused: e.message } : (e as Error).message ?? String(e),
        ),
        late,
      ]);
      if (failed !== null) return failed;
    }
    let got = 0;
    while (got < HEADER_BYTES) {
      const n = await Promise.race([ch.read(header.subarray(got)), late]);
      if (typeof n === "string") return n;
      if (n === null) return `closed after ${got} bytes, before a stream header`;
      got += n;
    }
  } finally {
    stop.removeEventListener("abort", onStop);
    timer.abort();
  }
  const view = new DataView(header.buffer);
  if (AUTH_MAGIC.every((b, i) => header[i] === b)) {
    return {
      refused: "offered the migration secret exchange, but this destination has no " +
        "migration_secret set",
    };
  }
  if (view.getUint32(0) !== QEVM_MAGIC || view.getUint32(4) !== QEVM_VERSION) {
    return `sent no savevm v3 header (first bytes ${hex(header)})`;
  }
  return header;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** A Channel that reads `prefix` first, then the channel underneath. */
class PrefixedChannel implements Channel {
  #prefix: Uint8Array;

  constructor(readonly inner: Channel, prefix: Uint8Array) {
    this.#prefix = prefix;
  }

  get peer(): string {
    return this.inner.peer;
  }

  get closed(): boolean {
    return this.inner.closed;
  }

  read(buf: Uint8Array): Promise<number | null> {
    if (this.#prefix.length === 0) return this.inner.read(buf);
    const n = Math.min(buf.length, this.#prefix.length);
    buf.set(this.#prefix.subarray(0, n));
    this.#prefix = this.#prefix.subarray(n);
    return Promise.resolve(n);
  }

  write(chunk: Uint8Array): Promise<void> {
    return this.inner.write(chunk);
  }

  finish(): Promise<void> {
    return this.inner.finish();
  }

  close(): void {
    this.inner.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
