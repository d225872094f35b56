import type { Channel, ChannelSecurity, Listener, Transports } from "../transports/transport.ts";
import type { Guest, RunState } from "../vm/guest.ts";
import type { Clock } from "./clock.ts";
import { describeError } from "./errors.ts";
import { StreamReader } from "./format/reader.ts";
import { loadStream } from "./incoming.ts";
import { DEFAULT_PARAMETERS } from "./params.ts";
import type { IncomingInfo, IncomingStatus } from "./contract.ts";
import { destinationSwitchover, errorMessage, pongMessage } from "./return_path.ts";
import { ProgressWatchdog, WatchedChannel } from "./watchdog.ts";
import { acceptStream, HEADER_DEADLINE_MS } from "./incoming_gate.ts";
import type { SectionRegistry } from "./sections/section.ts";
import type { CompressMethod } from "./format/compression.ts";

/** Everything an incoming migration depends on. */
export interface IncomingDeps {
  readonly guest: Guest;
  readonly transports: Transports;
  readonly clock: Clock;
  /** Start the guest after a successful load (false = QEMU's -S). */
  readonly autostart: boolean;
  /** How the listener protects the channel (TLS, the migration secret, the snapshot key). */
  readonly security?: ChannelSecurity;
  /**
   * ms without a byte received, once the peer connected, before the incoming
   * migration fails (the engine's `progress_timeout`; read live). Default 60 s.
   */
  readonly progressTimeout?: () => number;
  /** Gives the event loop one I/O turn (see StreamOptions.turn); default a timer. */
  readonly turn?: () => Promise<void>;
  /** The `verify` capability: check the stream's integrity record before the guest may start. */
  readonly verify?: boolean;
  /** Page records the stream may carry, as a multiple of the guest's pages (read at accept). */
  readonly pageBudget?: () => number;
  /** The sections this destination takes (default: ferry's own). */
  readonly sections?: SectionRegistry;
  /** The `compress_method` compressed RAM runs must use (read at accept; default none). */
  readonly compression?: () => CompressMethod;
  /** The `page_refs` capability: same-page references are accepted. */
  readonly pageRefs?: boolean;
  /** Every state transition. */
  onStateChange(from: IncomingStatus, to: IncomingStatus, error?: string): void;
}

/**
 * The destination of one migration (QEMU's -incoming): binds the URI, accepts one
 * peer, loads its stream into the stopped guest, and starts the guest only when
 * the whole stream was valid — and, when the source opened the return path, only
 * after the switchover handshake (see return_path.ts). A failed load leaves the
 * guest in `inmigrate`, where it cannot be started, and the engine can arm a new
 * incoming migration. On a socket, a connection that does not start with a stream
 * header within a few seconds is dropped and listening goes on (incoming_gate.ts);
 * once the stream started, `progressTimeout` ms without a byte from the peer fail
 * the migration. Waiting for a peer has no time limit, like QEMU's -incoming.
 */
export class IncomingMigration {
  #state: IncomingStatus = "none";
  #error: string | undefined;
  #listener: Listener | null = null;
  #channel: Channel | null = null;
  #address: string | undefined;
  #received = 0;
  /** Connections dropped because they did not start a stream (see incoming_gate.ts). */
  #refused = 0;
  /** Who the last dropped connection was and why (GET /migrations/incoming's last_refused). */
  #lastRefused: string | undefined;
  readonly #cancel = new AbortController();
  /** The stream's reader while a peer is being loaded. */
  #reader: StreamReader | null = null;
  #startedAt: number | undefined;
  #endedAt: number | undefined;
  #pages: IncomingInfo["pages"];
  /** The guest's run state before it was armed (restored when disarmed before a peer came). */
  #priorState: RunState = "paused";
  readonly #deps: IncomingDeps;
  /** Resolves when the incoming migration reached a final state. */
  done: Promise<void> = Promise.resolve();

  constructor(readonly uri: string, deps: IncomingDeps) {
    this.#deps = deps;
  }

  /** Current state. */
  get state(): IncomingStatus {
    return this.#state;
  }

  /** True while listening or loading. */
  get isActive(): boolean {
    return this.#state === "listening" || this.#state === "active";
  }

  /** Binds the URI and starts waiting for the peer; resolves with the real address. */
  async listen(): Promise<string> {
    const { guest } = this.#deps;
    this.#listener = await this.#deps.transports.listen(this.uri, this.#deps.security ?? {});
    this.#address = this.#listener.address;
    this.#priorState = guest.runState;
    if (guest.runState === "running") guest.stop("inmigrate");
    else guest.setRunState("inmigrate");
    this.#transition("listening");
    this.done = this.#run();
    return this.#address;
  }

  /**
   * Abandons the incoming migration (closing the listener or connection). Before a
   * peer connected the guest gets its run state back; once a stream was being
   * loaded it keeps the partial guest unstartable (`inmigrate`).
   */
  cancel(): boolean {
    if (!this.isActive) return false;
    const untouched = this.#state === "listening";
    this.#cancel.abort(new Error("the incoming migration was cancelled"));
    this.#listener?.close();
    this.#channel?.close();
    this.#transition("cancelled");
    if (untouched) this.#deps.guest.setRunState(this.#priorState);
    return true;
  }

  /** A snapshot for GET /migrations/incoming. */
  info(): IncomingInfo {
    const info: IncomingInfo = {
      status: this.#state,
      uri: this.uri,
      // While loading, straight from the reader: it moves with every read, not per section.
      bytes_received: this.#reader?.received ?? this.#received,
    };
    if (this.#address) info.address = this.#address;
    if (this.#startedAt !== undefined) {
      info.total_time = Math.round((this.#endedAt ?? this.#deps.clock.now()) - this.#startedAt);
    }
    if (this.#error !== undefined) info.error_desc = this.#error;
    if (this.#pages) info.pages = { ...this.#pages };
    if (this.#refused > 0) info.refused_peers = this.#refused;
    if (this.#lastRefused !== undefined) info.last_refused = this.#lastRefused;
    return info;
  }

  #transition(to: IncomingStatus, error?: string): void {
    const from = this.#state;
    if (from === to) return;
    this.#state = to;
    if (error !== undefined) this.#error = error;
    if (to === "completed" || to === "failed" || to === "cancelled") {
      this.#endedAt = this.#deps.clock.now();
    }
    this.#deps.onStateChange(from, to, error);
  }

  async #run(): Promise<void> {
    const { guest, clock } = this.#deps;
    let reader: StreamReader | null = null;
    let returnPath = false;
    const timeout = this.#deps.progressTimeout ?? (() => DEFAULT_PARAMETERS.progress_timeout);
    const watchdog = new ProgressWatchdog(
      timeout,
      () => this.#channel?.close(),
      "no data arrived from the source",
      clock,
    );
    try {
      const accepted = await acceptStream(this.#listener!, {
        clock,
        signal: this.#cancel.signal,
        deadlineMs: Math.min(HEADER_DEADLINE_MS, timeout()),
        onDropped: (peer, why) => {
          this.#refused++;
          this.#lastRefused = `${peer}: ${why}`;
        },
      });
      this.#listener!.close();
      if (this.#state !== "listening") {
        accepted.close();
        return;
      }
      this.#channel = new WatchedChannel(accepted, watchdog.start());
      this.#startedAt = clock.now();
      this.#transition("active");
      reader = new StreamReader(this.#channel, undefined, { turn: this.#deps.turn, clock });
      this.#reader = reader;
      const channel = this.#channel;
      const result = await loadStream(reader, guest, {
        onBytes: (n) => (this.#received = n),
        onPing: (value) => channel.write(pongMessage(value)),
        onReturnPath: () => (returnPath = true),
        verify: this.#deps.verify ?? false,
        maxRecords: (this.#deps.pageBudget?.() ?? Infinity) *
          guest.blocks.reduce((n, b) => n + b.pages, 0),
        ...(this.#deps.sections ? { sections: this.#deps.sections } : {}),
        compression: this.#deps.compression?.() ?? "none",
        pageRefs: this.#deps.pageRefs ?? false,
      });
      if (result.returnPath) await destinationSwitchover(reader, this.#channel);
      this.#received = reader.received;
      this.#pages = {
        zero: result.zeroPages,
        normal: result.normalPages,
        ...(result.compressedPages > 0 ? { compressed: result.compressedPages } : {}),
        ...(result.refPages > 0 ? { refs: result.refPages } : {}),
      };
      this.#channel.close();
      if ((this.#state as IncomingStatus) !== "active") return;
      // A guest that cannot run (a QEMU image: GET /vm says why) stays paused.
      if (this.#deps.autostart && !guest.startBlocker?.()) guest.start();
      else guest.stop("paused");
      this.#transition("completed");
    } catch (e) {
      if (reader) this.#received = reader.received;
      this.#listener?.close();
      const reason = describeError(watchdog.error ?? e);
      // Tell the source why, so it reports this reason rather than a dropped connection.
      if (returnPath && this.#channel && !this.#channel.closed && this.#state !== "cancelled") {
        await this.#channel.write(errorMessage(reason)).catch(() => {});
      }
      this.#channel?.close();
      if (this.#state === "cancelled") return;
      this.#transition("failed", reason);
    } finally {
      watchdog.stop();
      if (reader) this.#received = reader.received;
      this.#reader = null;
      reader?.release();
    }
  }
}
