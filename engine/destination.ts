import {
  type Channel,
  type ChannelSecurity,
  type Listener,
  TransportError,
  type Transports,
} from "../transports/transport.ts";
import type { Guest, RunState } from "../vm/guest.ts";
import type { Clock } from "./clock.ts";
import { describeError } from "./errors.ts";
import { StreamReader } from "./format/reader.ts";
import {
  createLoadState,
  type LoadOptions,
  type LoadResult,
  type LoadState,
  loadStream,
} from "./incoming.ts";
import { DEFAULT_PARAMETERS } from "./params.ts";
import { EngineError } from "./errors.ts";
import { defaultSections } from "./sections/registry.ts";
import {
  answerResume,
  identityOf,
  isChannelBreak,
  RESUME_BACKOFF_MS,
  ResumeRefusedError,
  ResumeStats,
} from "./resume.ts";
import type { IncomingInfo, IncomingStatus } from "./contract.ts";
import { destinationSwitchover, errorMessage, pongMessage } from "./return_path.ts";
import { ProgressWatchdog, WatchedChannel } from "./watchdog.ts";
import { acceptStream, HEADER_DEADLINE_MS } from "./incoming_gate.ts";
import type { SectionRegistry } from "./sections/section.ts";
import type { CompressMethod } from "./format/compression.ts";
import { MultifdReceiver } from "./multifd/receiver.ts";

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
  /**
   * ms to wait in `interrupted` when the stream breaks during pre-copy, for the
   * source to resume (read live; 0 fails at once). Default 0.
   */
  readonly resumeGrace?: () => number;
  /** Listen again at once when interrupted (`resume_auto`; read live). */
  readonly resumeAuto?: () => boolean;
  /** `multifd_channels` (read when armed): above 1, pages come over that many more connections. */
  readonly multifdChannels?: number;
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
  /** Bytes received on connections before the current one (an interrupted pre-copy). */
  #bytesBefore = 0;
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
  /** With multifd_channels > 1: the page channels (docs/ARCHITECTURE.md, "Multifd"). */
  #multifd: MultifdReceiver | null = null;
  /** The guest's run state before it was armed (restored when disarmed before a peer came). */
  #priorState: RunState = "paused";
  readonly #deps: IncomingDeps;
  readonly #resumeStats = new ResumeStats();
  /** While interrupted: hands the loop the listener a resume asked for. */
  #offer: ((listener: Listener) => void) | null = null;
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
    return this.#state === "listening" || this.#state === "active" ||
      this.#state === "interrupted";
  }

  /**
   * While interrupted: listens for the source's resume on `uri` (default the address
   * the stream came to) and answers once listening (docs/ARCHITECTURE.md, "Resuming
   * an interrupted pre-copy"). Throws EngineError `not-interrupted` otherwise.
   */
  async resume(uri?: string): Promise<IncomingInfo> {
    if (this.#state !== "interrupted" || this.#offer === null) {
      throw new EngineError(
        "not-interrupted",
        this.#state === "interrupted"
          ? `Already listening for the source's resume at ${this.#address}`
          : `Cannot resume: the incoming migration is ${this.#state}, not interrupted`,
      );
    }
    const offer = this.#offer;
    this.#offer = null;
    let listener: Listener;
    try {
      listener = await this.#deps.transports.listen(
        uri ?? this.#address ?? this.uri,
        this.#deps.security ?? {},
      );
    } catch (e) {
      this.#offer = offer;
      throw e;
    }
    this.#address = listener.address;
    offer(listener);
    return this.info();
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
    this.#multifd?.close();
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
      bytes_received: this.#bytesBefore + (this.#reader?.received ?? this.#received),
    };
    if (this.#address) info.address = this.#address;
    if (this.#startedAt !== undefined) {
      info.total_time = Math.round((this.#endedAt ?? this.#deps.clock.now()) - this.#startedAt);
    }
    if (this.#error !== undefined) info.error_desc = this.#error;
    if (this.#pages) info.pages = { ...this.#pages };
    if (this.#refused > 0) info.refused_peers = this.#refused;
    if (this.#lastRefused !== undefined) info.last_refused = this.#lastRefused;
    const resume = this.#resumeStats.info(this.#deps.clock.now());
    if (resume) info.resume = resume;
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

  /**
   * The load threw `e`. When that is the stream breaking during pre-copy
   * (docs/ARCHITECTURE.md, "Resuming an interrupted pre-copy"), waits in
   * `interrupted`, holding what it loaded, for the source's resume, and returns a
   * reader on the new connection, just after its resume request; otherwise, once
   * the grace period ends (RAM is then cleared) or when disarmed, throws.
   */
  async #interrupted(
    e: unknown,
    state: LoadState,
    reader: StreamReader,
    watchdog: ProgressWatchdog,
  ): Promise<StreamReader> {
    const { clock, guest } = this.#deps;
    const grace = this.#deps.resumeGrace?.() ?? 0;
    if (
      this.#state !== "active" || state.final || state.migrationId === undefined ||
      !state.digests || grace <= 0 || watchdog.error !== null || !isChannelBreak(e)
    ) throw e;
    const digests = state.digests;
    watchdog.stop();
    this.#channel?.close();
    const before = reader.received;
    reader.release();
    this.#reader = null;
    const stats = this.#resumeStats;
    stats.interruptions++;
    stats.lastError = describeError(e);
    stats.graceEnds = clock.now() + grace;
    stats.pagesHeld = digests.ram.reduce((n, r) => n + countHeld(r.table.digests), 0);
    this.#transition("interrupted");
    const wait = new AbortController();
    const onCancel = () => wait.abort(this.#cancel.signal.reason);
    this.#cancel.signal.addEventListener("abort", onCancel, { once: true });
    clock.until(stats.graceEnds, wait.signal).then(
      () =>
        wait.abort(
          new Error(
            `The stream broke during pre-copy (${stats.lastError}) and the source did not ` +
              `resume within resume_grace (${grace} ms); what was received is discarded`,
          ),
        ),
      () => {},
    );
    const identity = identityOf(
      state.migrationId,
      (this.#deps.sections ?? defaultSections()).machineType,
      guest.blocks,
    );
    try {
      let listener = await this.#awaitListener(wait.signal);
      for (;;) {
        this.#listener = listener;
        let accepted: Channel;
        try {
          accepted = await acceptStream(listener, {
            clock,
            signal: wait.signal,
            deadlineMs: Math.min(HEADER_DEADLINE_MS, this.#deps.progressTimeout?.() ?? Infinity),
            onDropped: (peer, why) => {
              this.#refused++;
              this.#lastRefused = `${peer}: ${why}`;
            },
          });
        } finally {
          listener.close();
        }
        const channel = new WatchedChannel(accepted, watchdog.start());
        const next = new StreamReader(channel, undefined, { turn: this.#deps.turn, clock });
        try {
          await answerResume(next, channel, identity, digests);
        } catch (err) {
          watchdog.stop();
          channel.close();
          next.release();
          if (wait.signal.aborted) throw wait.signal.reason;
          if (!(err instanceof ResumeRefusedError) && !isChannelBreak(err)) throw err;
          this.#refused++;
          this.#lastRefused = `${accepted.peer}: ${describeError(err)}`;
          // Listen on for the right source, at the same address.
          listener = await this.#listenAgain(listener.address, wait.signal);
          continue;
        }
        this.#channel = channel;
        this.#reader = next;
        this.#bytesBefore += before;
        const held = digests.ram.reduce((n, r) => n + countHeld(r.table.digests), 0);
        stats.resumed(held, guest.blocks.reduce((n, b) => n + b.pages, 0) - held);
        this.#transition("active");
        return next;
      }
    } catch (err) {
      // The grace period ended: what was received is discarded (disarming keeps it unstartable).
      if (!this.#cancel.signal.aborted) {
        for (const block of guest.blocks) {
          block.bytes.fill(0);
          block.touched.fill(0);
        }
      }
      throw err;
    } finally {
      this.#cancel.signal.removeEventListener("abort", onCancel);
      wait.abort();
      this.#offer = null;
    }
  }

  /**
   * Listens on `uri` again, retrying with back-off while the address is still held
   * (the socket of the broken stream may keep it a moment), until `signal` aborts.
   */
  async #listenAgain(uri: string, signal: AbortSignal): Promise<Listener> {
    for (let attempt = 0;; attempt++) {
      try {
        return await this.#deps.transports.listen(uri, this.#deps.security ?? {});
      } catch (e) {
        if (!(e instanceof TransportError) || e.code !== "listen-failed") throw e;
        const delay = RESUME_BACKOFF_MS[Math.min(attempt, RESUME_BACKOFF_MS.length - 1)];
        await this.#deps.clock.sleep(delay, signal);
      }
    }
  }

  /** The listener for the source's resume: at once with resume_auto, else from resume(). */
  async #awaitListener(signal: AbortSignal): Promise<Listener> {
    if (this.#deps.resumeAuto?.()) {
      const listener = await this.#listenAgain(this.#address ?? this.uri, signal);
      this.#address = listener.address;
      return listener;
    }
    return await new Promise<Listener>((resolve, reject) => {
      const onAbort = () => {
        this.#offer = null;
        reject(signal.reason);
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      this.#offer = (listener) => {
        signal.removeEventListener("abort", onAbort);
        if (signal.aborted) listener.close();
        resolve(listener);
      };
    });
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
    const onDropped = (peer: string, why: string) => {
      this.#refused++;
      this.#lastRefused = `${peer}: ${why}`;
    };
    const channels = this.#deps.multifdChannels ?? 1;
    /** Rejects with the first failure of a multifd channel. */
    let multifdFailed: Promise<never> | null = null;
    let loading: Promise<unknown> | null = null;
    try {
      if (channels > 1) {
        const listener = this.#listener!;
        const compression = this.#deps.compression?.() ?? "none";
        let fail: (e: Error) => void = () => {};
        multifdFailed = new Promise<never>((_, reject) => (fail = reject));
        multifdFailed.catch(() => {});
        this.#multifd = new MultifdReceiver({
          count: channels,
          blocks: guest.blocks,
          codec: compression === "none" ? null : compression,
          clock,
          deadlineMs: Math.min(HEADER_DEADLINE_MS, timeout()),
          ...(listener.authenticate ? { authenticate: (ch) => listener.authenticate!(ch) } : {}),
          onError: (e) => fail(e),
          onDropped,
          onAllConnected: () => listener.close(),
          maxPages: (this.#deps.pageBudget?.() ?? Infinity) *
            guest.blocks.reduce((n, b) => n + b.pages, 0),
          // A sync point can keep the main stream quiet while the channels carry pages.
          onProgress: () => watchdog.progress(),
        });
      }
      const multifd = this.#multifd;
      const accepted = await acceptStream(this.#listener!, {
        clock,
        signal: this.#cancel.signal,
        deadlineMs: Math.min(HEADER_DEADLINE_MS, timeout()),
        onDropped,
        ...(multifd ? { afterStream: (ch: Channel) => multifd.offer(ch) } : {}),
      });
      if (!multifd) this.#listener!.close();
      if (this.#state !== "listening") {
        accepted.close();
        return;
      }
      this.#channel = new WatchedChannel(accepted, watchdog.start());
      this.#startedAt = clock.now();
      this.#transition("active");
      reader = new StreamReader(this.#channel, undefined, { turn: this.#deps.turn, clock });
      this.#reader = reader;
      const options: LoadOptions = {
        onBytes: (n) => (this.#received = n),
        onPing: (value) => this.#channel!.write(pongMessage(value)),
        onReturnPath: () => (returnPath = true),
        verify: this.#deps.verify ?? false,
        maxRecords: (this.#deps.pageBudget?.() ?? Infinity) *
          guest.blocks.reduce((n, b) => n + b.pages, 0),
        ...(this.#deps.sections ? { sections: this.#deps.sections } : {}),
        compression: this.#deps.compression?.() ?? "none",
        pageRefs: this.#deps.pageRefs ?? false,
        ...(multifd ? { multifd } : {}),
      };
      const state = createLoadState(guest, options);
      let result: LoadResult;
      for (;;) {
        const load = loadStream(reader, guest, { ...options, state });
        loading = load;
        try {
          // A failed page channel fails the load at once, whatever the main stream is doing.
          result = multifdFailed ? await Promise.race([load, multifdFailed]) : await load;
          break;
        } catch (e) {
          // Multifd's page channels cannot be resumed (docs/ARCHITECTURE.md, "Multifd").
          if (multifd) throw e;
          reader = await this.#interrupted(e, state, reader, watchdog);
        }
      }
      if (result.returnPath) await destinationSwitchover(reader, this.#channel);
      this.#received = reader.received;
      this.#pages = {
        zero: result.zeroPages,
        normal: result.normalPages,
        ...(result.compressedPages > 0 ? { compressed: result.compressedPages } : {}),
        ...(result.refPages > 0 ? { refs: result.refPages } : {}),
      };
      if (multifd) {
        this.#pages.zero += multifd.stats.zero;
        this.#pages.normal += multifd.stats.normal;
        this.#pages.multifd_packets = multifd.stats.packets;
      }
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
      this.#multifd?.close();
      // The main stream's loader ends once its channel is closed.
      await loading?.catch(() => {});
      if (this.#state === "cancelled") return;
      this.#transition("failed", reason);
    } finally {
      watchdog.stop();
      this.#multifd?.close();
      this.#listener?.close();
      if (reader) this.#received = reader.received;
      this.#reader = null;
      reader?.release();
    }
  }
}

/** Pages with a non-zero digest entry: held by this destination. */
function countHeld(entries: Uint32Array): number {
  let n = 0;
  for (let i = 0; i < entries.length; i++) if (entries[i] !== 0) n++;
  return n;
}
