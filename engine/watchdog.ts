import type { Channel } from "../transports/transport.ts";
import type { Clock } from "./clock.ts";

/** The longest a watchdog waits between two looks at the clock (so a lowered timeout applies soon). */
const MAX_CHECK_MS = 1000;

/** Largest piece a {@link WatchedChannel} hands to its transport at once: each accepted piece is progress. */
export const WATCHED_WRITE_PIECE = 1 << 20;

/** A migration failed because no byte moved for `progress_timeout` ms. */
export class ProgressTimeoutError extends Error {
  override readonly name = "ProgressTimeoutError";
  constructor(readonly timeoutMs: number, readonly idleMs: number, what: string) {
    super(
      `No progress for ${Math.round(idleMs)} ms (progress_timeout is ${timeoutMs} ms): ${what}`,
    );
  }
}

/**
 * Fails a migration whose bytes stop moving (KubeVirt's progressTimeout). Every
 * byte accepted or received calls {@link progress}; when nothing did for the
 * current timeout (read live, so a PATCH applies within a second), it calls
 * `onTimeout` once with a {@link ProgressTimeoutError}, which the owner turns into
 * closing its channel and aborting what it awaits. It is a safety net against
 * hangs: it only watches the engine's clock (deadlines, never sleeps), so on the
 * real clock it fires whatever the migration code is stuck on.
 */
export class ProgressWatchdog {
  readonly #timeoutMs: () => number;
  readonly #onTimeout: (error: ProgressTimeoutError) => void;
  readonly #what: string;
  readonly #clock: Clock;
  #last = 0;
  #stop: AbortController | null = null;
  #error: ProgressTimeoutError | null = null;

  /**
   * `timeoutMs` is read at every check; `what` says what stopped moving ("the
   * destination accepted no data"); `clock` is the engine's.
   */
  constructor(
    timeoutMs: () => number,
    onTimeout: (error: ProgressTimeoutError) => void,
    what: string,
    clock: Clock,
  ) {
    this.#timeoutMs = timeoutMs;
    this.#onTimeout = onTimeout;
    this.#what = what;
    this.#clock = clock;
  }

  /** Starts watching; the time before the first progress counts. Returns this. */
  start(): this {
    if (this.#stop || this.#error) return this;
    this.#stop = new AbortController();
    this.#last = this.#clock.now();
    this.#watch(this.#stop.signal);
    return this;
  }

  /** Records that bytes moved just now. */
  progress(): void {
    this.#last = this.#clock.now();
  }

  /** The timeout that fired, or null. */
  get error(): ProgressTimeoutError | null {
    return this.#error;
  }

  /** Stops watching (always call it when the migration ends: it drops the pending deadline). */
  stop(): void {
    this.#stop?.abort();
    this.#stop = null;
  }

  async #watch(stopped: AbortSignal): Promise<void> {
    let wait = this.#timeoutMs();
    for (;;) {
      try {
        await this.#clock.until(
          this.#clock.now() + Math.max(1, Math.min(wait, MAX_CHECK_MS)),
          stopped,
        );
      } catch {
        return; // stopped
      }
      const limit = this.#timeoutMs();
      const idle = this.#clock.now() - this.#last;
      if (idle < limit) {
        wait = limit - idle;
        continue;
      }
      this.#stop = null;
      this.#error = new ProgressTimeoutError(limit, idle, this.#what);
      this.#onTimeout(this.#error);
      return;
    }
  }
}

/** Options of a {@link WatchedChannel}. */
export interface WatchedChannelOptions {
  /**
   * Runs inside finish(), after every queued write was accepted and before the
   * transport's own finish: the source's return-path handshake. It talks through
   * the watched channel, so the watchdog and close() cover it. Once it resolved,
   * finish() succeeds whatever the transport's own finish reports.
   */
  readonly beforeFinish?: (channel: Channel) => Promise<void>;
}

/**
 * A Channel that reports progress to a {@link ProgressWatchdog} (each accepted
 * write piece of at most 1 MiB, each read that returned bytes) and that honours
 * close() by itself: pending reads and writes reject at once even if the
 * transport underneath would keep them waiting. Once the watchdog fired, every
 * failure is reported as its {@link ProgressTimeoutError}.
 */
export class WatchedChannel implements Channel {
  readonly #inner: Channel;
  readonly #watchdog: ProgressWatchdog | null;
  readonly #options: WatchedChannelOptions;
  #closed = false;
  readonly #closing: Promise<never>;
  #rejectClosing!: (e: Error) => void;
  #tail: Promise<unknown> = Promise.resolve();
  #writeFailure: unknown = null;

  constructor(
    inner: Channel,
    watchdog: ProgressWatchdog | null,
    options: WatchedChannelOptions = {},
  ) {
    this.#inner = inner;
    this.#watchdog = watchdog;
    this.#options = options;
    this.#closing = new Promise<never>((_, reject) => (this.#rejectClosing = reject));
    this.#closing.catch(() => {});
  }

  /** The transport's peer. */
  get peer(): string {
    return this.#inner.peer;
  }

  /** True once closed here or by the transport. */
  get closed(): boolean {
    return this.#closed || this.#inner.closed;
  }

  /** Writes every byte, in pieces of at most 1 MiB; writes are serialised. */
  write(chunk: Uint8Array): Promise<void> {
    const run = this.#tail.then(() => this.#writeAll(chunk));
    this.#tail = run.catch((e) => {
      this.#writeFailure ??= e;
    });
    return run;
  }

  async #writeAll(chunk: Uint8Array): Promise<void> {
    if (this.#closed) throw this.#closedError();
    if (chunk.length <= WATCHED_WRITE_PIECE) {
      await this.#guard(this.#inner.write(chunk));
      this.#watchdog?.progress();
      return;
    }
    for (let off = 0; off < chunk.length; off += WATCHED_WRITE_PIECE) {
      await this.#guard(this.#inner.write(chunk.subarray(off, off + WATCHED_WRITE_PIECE)));
      this.#watchdog?.progress();
    }
  }

  /** Reads like the transport; bytes received count as progress. */
  async read(buf: Uint8Array): Promise<number | null> {
    if (this.#closed) throw this.#closedError();
    const n = await this.#guard(this.#inner.read(buf));
    if (n !== null && n > 0) this.#watchdog?.progress();
    return n;
  }

  /** Waits for queued writes, runs `beforeFinish`, then finishes the transport. Closes in every case. */
  async finish(): Promise<void> {
    try {
      if (this.#closed) throw this.#closedError();
      await this.#tail;
      if (this.#writeFailure !== null) throw this.#mapped(this.#writeFailure);
      if (this.#options.beforeFinish) {
        await this.#options.beforeFinish(this);
        // The handshake is done (the source's commit is out): the destination may
        // start its guest now, so nothing the transport says from here on may make
        // the source resume its own. Finish quietly.
        await this.#inner.finish().catch(() => {});
        return;
      }
      await this.#guard(this.#inner.finish());
    } finally {
      this.close();
    }
  }

  /** Closes the transport; pending and later reads and writes reject. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#rejectClosing(this.#closedError());
    this.#inner.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #closedError(): Error {
    return this.#watchdog?.error ??
      new Error(`Cannot use the channel to ${this.#inner.peer}: it is closed`);
  }

  #mapped(e: unknown): unknown {
    return this.#watchdog?.error ?? e;
  }

  #guard<T>(op: Promise<T>): Promise<T> {
    return Promise.race([op, this.#closing]).catch((e) => {
      throw this.#mapped(e);
    });
  }
}
