import type { Channel, ChannelSecurity, Transports } from "../transports/transport.ts";
import type { Guest } from "../vm/guest.ts";
import { PAGE_SIZE } from "./format/constants.ts";
import { type Clock, settledWithin } from "./clock.ts";
import { describeError, EngineError } from "./errors.ts";
import { DeadlineError } from "./deadline.ts";
import { StreamWriter } from "./format/writer.ts";
import {
  createSavers,
  type OutgoingContext,
  type OutgoingResult,
  runPrecopy,
  writeSetup,
} from "./outgoing.ts";
import type { Capabilities, Parameters } from "./params.ts";
import type { WindowStats } from "./rate_limiter.ts";
import type { RamSaver } from "./sections/ram.ts";
import { BlockSaver } from "./sections/block.ts";
import type { SectionRegistry } from "./sections/section.ts";
import { defaultSections } from "./sections/registry.ts";
import { sendOpenReturnPath, sendPing, SourceReturnPath, usesReturnPath } from "./return_path.ts";
import { ProgressWatchdog, WatchedChannel } from "./watchdog.ts";
import { MigrationDigests } from "./integrity.ts";
import type {
  MigrationInfo,
  MigrationRecord,
  MigrationStatus,
  MigrationWarning,
  Timeline,
} from "./contract.ts";
import { explain, FlightRecorder } from "./flight_recorder.ts";
import { StallError } from "./stall.ts";
import {
  identityOf,
  newMigrationId,
  requestResume,
  RESUME_BACKOFF_MS,
  type ResumeRequest,
  ResumeRequests,
  ResumeStats,
  sendMigrationId,
} from "./resume.ts";
import { MultifdSender } from "./multifd/sender.ts";
import { openMultifd, sendMultifdFlush } from "./multifd/setup.ts";

/** States after which nothing more happens. */
export const FINAL_STATES: ReadonlySet<MigrationStatus> = new Set([
  "cancelled",
  "completed",
  "failed",
]);

const TRANSITIONS: Record<MigrationStatus, readonly MigrationStatus[]> = {
  none: ["setup"],
  setup: ["active", "cancelling", "failed"],
  active: ["completed", "interrupted", "cancelling", "failed", "pre-switchover"],
  // The channel failed during pre-copy: resumed, cancelled, or failed when the grace ends.
  interrupted: ["active", "cancelling", "failed"],
  // pause_before_switchover: the guest is stopped; continue → device, cancel → cancelling.
  "pre-switchover": ["device", "cancelling", "failed"],
  device: ["completed", "cancelling", "failed"],
  // A stream that was already complete when the cancel came stays completed:
  // the guest now lives on the destination.
  cancelling: ["cancelled", "failed", "completed"],
  cancelled: [],
  completed: [],
  failed: [],
};

/** States a cancel applies to (in pre-switchover and device the guest resumes here). */
const CANCELLABLE: ReadonlySet<MigrationStatus> = new Set([
  "setup",
  "active",
  "interrupted",
  "pre-switchover",
  "device",
]);

/** True when the state machine allows `from → to`. */
export function canTransition(from: MigrationStatus, to: MigrationStatus): boolean {
  return TRANSITIONS[from].includes(to);
}

/**
 * Longest a failed migration waits for the destination's reason on the return
 * path, ms (a safety bound: the wait normally ends when the connection does).
 */
const REASON_WAIT_MS = 2000;

/** Callbacks a Migration reports through (the engine wires them to its notifier). */
export interface MigrationHooks {
  /** Every state transition, after it happened. */
  onStateChange(from: MigrationStatus, to: MigrationStatus, error?: string): void;
  /** Every dirty-log sync. */
  onPass(pass: number, dirtyPages: number): void;
  /** After every 100 ms window. */
  onProgress(): void;
  /** A warning was added to the migration's info. */
  onWarning(code: string, message: string): void;
}

/** Everything a Migration depends on. */
export interface MigrationDeps {
  readonly guest: Guest;
  readonly transports: Transports;
  readonly clock: Clock;
  readonly params: () => Readonly<Parameters>;
  /** Capabilities in force for this migration (fixed while it is active). */
  readonly capabilities: Readonly<Capabilities>;
  /** How the channel is protected (TLS, the migration secret, the snapshot key); fixed at start. */
  readonly security?: ChannelSecurity;
  readonly hooks: MigrationHooks;
  /** Block migration: blk copies the whole disk, inc only chunks written since the base. */
  readonly block?: { readonly incremental: boolean };
  /** Gives the event loop one I/O turn (see StreamOptions.turn); default a timer. */
  readonly turn?: () => Promise<void>;
  /** The sections to send (default: ferry's own, defaultSections()). */
  readonly sections?: SectionRegistry;
  /** The migration's id (default a random UUID). */
  readonly id?: string;
}

/**
 * One outgoing migration: opens the channel, runs the pre-copy loop, and owns the
 * state machine `setup → active → completed | failed | cancelling → cancelled`.
 * Whatever happens, a guest that was running before is running again unless the
 * migration completed.
 */
export class Migration {
  #state: MigrationStatus = "none";
  #error: string | undefined;
  readonly #deps: MigrationDeps;
  readonly #abort = new AbortController();
  #channel: Channel | null = null;
  #ram: RamSaver | null = null;
  #block: BlockSaver | null = null;
  #writer: StreamWriter | null = null;
  /** The return path's reader, once the stream opened it. */
  #returnPath: SourceReturnPath | null = null;
  /** With multifd_channels > 1: the page channels (docs/ARCHITECTURE.md, "Multifd"). */
  #multifd: MultifdSender | null = null;
  readonly #startedAt: number;
  #setupTime: number | undefined;
  #endedAt: number | undefined;
  #downtime: number | undefined;
  #expectedDowntime: number | undefined;
  #mbps = 0;
  /** Last PING value sent over the return path. */
  #pings = 0;
  #pagesPerSecond = 0;
  #lastPages = 0;
  #throttle = 0;
  readonly #warnings: MigrationWarning[] = [];
  /** Resuming an interrupted pre-copy (engine/resume.ts): the id, requests and counters. */
  readonly #id = newMigrationId();
  readonly #resumes = new ResumeRequests();
  readonly #resumeStats = new ResumeStats();
  /** Stream bytes written on channels before the current one. */
  #bytesBefore = 0;
  /** True once the guest was stopped for the final pass: a failure from here on is final. */
  #stopping = false;
  /** True once the first stream carried the migration id and the destination answered. */
  #idSent = false;
  /** The URI the destination was reached at last (resume_auto reconnects to it). */
  #lastUri: string;
  /** Resolves the wait in pre-switchover (set only while waiting). */
  #resume: (() => void) | null = null;
  readonly done: Promise<void>;
  /** This migration's id (GET /migrations/{id}). */
  readonly id: string;
  /** Wall-clock start, ms since the epoch. */
  readonly startedAtWall: number;
  readonly #recorder: FlightRecorder;
  /** The last pass the recorder got (the final one is reported twice). */
  #recordedPass = 0;

  constructor(readonly uri: string, deps: MigrationDeps) {
    this.#deps = deps;
    this.#lastUri = uri;
    this.#startedAt = deps.clock.now();
    this.startedAtWall = deps.clock.wall();
    this.id = deps.id ?? crypto.randomUUID();
    this.#recorder = new FlightRecorder(this.id, this.#startedAt);
    this.#transition("setup");
    this.done = this.#run();
  }

  /** Current state. */
  get state(): MigrationStatus {
    return this.#state;
  }

  /** True until the migration reached a final state. */
  get isActive(): boolean {
    return !FINAL_STATES.has(this.#state);
  }

  /**
   * Asks the migration to stop. Takes effect at once: the channel is closed, so a
   * write blocked on a peer that stopped reading fails now. Returns false when
   * there was nothing to cancel.
   */
  cancel(): boolean {
    if (!CANCELLABLE.has(this.#state)) return false;
    this.#transition("cancelling");
    this.#abort.abort(new Error("migration cancelled"));
    this.#channel?.close();
    this.#multifd?.close();
    return true;
  }

  /**
   * Lets a migration waiting in `pre-switchover` go on (QEMU's migrate-continue);
   * false when it is not waiting there.
   */
  continue(): boolean {
    const resume = this.#resume;
    if (this.#state !== "pre-switchover" || !resume) return false;
    this.#resume = null;
    this.#transition("device");
    resume();
    return true;
  }

  /** The flight recorder's timeline so far. */
  timeline(): Timeline {
    return this.#recorder.timeline();
  }

  /**
   * This migration as GET /migrations/{id} shows it: final (or current) stats and
   * the explanation of why it went as it did.
   */
  record(): MigrationRecord {
    const info = this.info();
    const rec: MigrationRecord = {
      id: this.id,
      direction: "outgoing",
      status: info.status,
      uri: this.uri,
      started_at: this.startedAtWall,
      bytes: this.#writer?.bytes ?? 0,
    };
    if (this.#endedAt !== undefined) {
      rec.ended_at = Math.round(this.startedAtWall + this.#endedAt - this.#startedAt);
    }
    if (info.total_time !== undefined) rec.total_time = info.total_time;
    if (info.downtime !== undefined) rec.downtime = info.downtime;
    if (info.ram) {
      rec.ram_total = info.ram.total;
      rec.passes = info.ram.dirty_sync_count;
    }
    if (this.#recorder.maxThrottle > 0) rec.cpu_throttle_percentage = this.#recorder.maxThrottle;
    if (info.error_desc !== undefined) rec.error_desc = info.error_desc;
    if (info.warnings) rec.warnings = info.warnings;
    rec.explanation = explain(info, this.#recorder.timeline(), this.#deps.params().downtime_limit);
    return rec;
  }

  /** A snapshot for query-migrate. */
  info(): MigrationInfo {
    const now = this.#endedAt ?? this.#deps.clock.now();
    const info: MigrationInfo = {
      id: this.id,
      status: this.#state,
      uri: this.uri,
      total_time: Math.round(now - this.#startedAt),
    };
    if (this.#setupTime !== undefined) info.setup_time = Math.round(this.#setupTime);
    if (this.#state === "active" && this.#expectedDowntime !== undefined) {
      info.expected_downtime = Number.isFinite(this.#expectedDowntime)
        ? Math.round(this.#expectedDowntime)
        : -1;
    }
    if (this.#downtime !== undefined) info.downtime = Math.round(this.#downtime * 1000) / 1000;
    if (this.#error !== undefined) info.error_desc = this.#error;
    const ram = this.#ram;
    if (ram) {
      const elapsed = Math.max(1, now - this.#startedAt);
      info.ram = {
        transferred: ram.stats.transferred,
        remaining: this.#state === "completed" ? 0 : ram.remainingBytes,
        total: ram.totalBytes,
        duplicate: ram.stats.duplicate,
        skipped: 0,
        normal: ram.stats.normal,
        normal_bytes: ram.stats.normal * PAGE_SIZE,
        dirty_pages_rate: ram.stats.dirtyPagesRate,
        mbps: FINAL_STATES.has(this.#state)
          ? round3(((this.#bytesBefore + (this.#writer?.bytes ?? 0)) * 8) / elapsed / 1000)
          : round3(this.#mbps),
        dirty_sync_count: ram.stats.dirtySyncCount,
        pages_per_second: Math.round(this.#pagesPerSecond),
        page_size: PAGE_SIZE,
      };
      const xb = ram.stats.xbzrle;
      if (xb) {
        info.xbzrle_cache = {
          cache_size: ram.cacheSize,
          bytes: xb.bytes,
          pages: xb.pages,
          cache_miss: xb.cacheMiss,
          cache_miss_rate: xb.lookups > 0 ? round3(xb.cacheMiss / xb.lookups) : 0,
          overflow: xb.overflow,
        };
      }
      const cz = ram.stats.compression;
      if (cz) {
        info.compression = {
          method: cz.method,
          pages: cz.pages,
          raw_bytes: cz.rawBytes,
          bytes: cz.bytes,
          incompressible: cz.incompressible,
          skipped_windows: cz.gate.skippedWindows,
          active: cz.gate.active,
        };
      }
      if (ram.stats.refPages !== null) info.page_refs = { pages: ram.stats.refPages };
      const mfd = this.#multifd;
      if (mfd) {
        info.multifd = {
          channels: mfd.count,
          packets: mfd.stats.packets,
          compressed_packets: mfd.stats.compressed,
          bytes: mfd.stats.bytes,
          sync_points: mfd.stats.syncs,
        };
      }
    }
    const block = this.#block;
    if (block) {
      info.disk = {
        transferred: block.stats.transferred,
        remaining: this.#state === "completed" ? 0 : block.remainingBytes,
        total: block.totalBytes,
      };
    }
    if (this.#throttle > 0 && !FINAL_STATES.has(this.#state)) {
      info.cpu_throttle_percentage = this.#throttle;
    }
    if (this.#warnings.length > 0) info.warnings = this.#warnings.map((w) => ({ ...w }));
    const resume = this.#resumeStats.info(now, this.#writer?.bytes);
    if (resume) info.resume = resume;
    return info;
  }

  /**
   * Carries an interrupted migration on over a new channel to `uri` (the same
   * destination, listening again): resolves once it is active again. Throws
   * EngineError `not-interrupted` when it is not interrupted, `resume-refused` when
   * the destination refused or could not be reached (it stays interrupted).
   */
  async resume(uri: string): Promise<MigrationInfo> {
    if (this.#state !== "interrupted") {
      throw new EngineError(
        "not-interrupted",
        `Cannot resume: the migration is ${this.#state}, not interrupted`,
      );
    }
    try {
      await this.#resumes.request(uri);
    } catch (e) {
      throw new EngineError("resume-refused", describeError(e), undefined, { cause: e });
    }
    return this.info();
  }

  #transition(to: MigrationStatus, error?: string): void {
    const from = this.#state;
    if (from === to) return;
    if (!canTransition(from, to)) throw new Error(`bad migration transition ${from} → ${to}`);
    this.#state = to;
    if (error !== undefined) this.#error = error;
    if (FINAL_STATES.has(to)) this.#endedAt = this.#deps.clock.now();
    this.#recorder?.event(
      this.#deps.clock.now(),
      "state",
      `${from} → ${to}${error !== undefined ? `: ${error}` : ""}`,
    );
    this.#deps.hooks.onStateChange(from, to, error);
  }

  /**
   * Two PINGs over the return path: the first returns once the destination has
   * loaded everything sent before it (the pipe is empty), the second measures the
   * bare round trip, which is returned (ms).
   */
  async #drain(writer: StreamWriter): Promise<number> {
    const { clock } = this.#deps;
    // With multifd, a sync point first: the PONG then also means every channel's
    // pages are applied (docs/ARCHITECTURE.md, "Multifd").
    if (this.#multifd) {
      await this.#multifd.barrier();
      await sendMultifdFlush(writer);
    }
    let rtt = 0;
    for (let i = 0; i < 2; i++) {
      const value = ++this.#pings;
      const sent = clock.now();
      await sendPing(writer, value);
      await writer.flush();
      await this.#returnPath!.awaitPong(value);
      rtt = clock.now() - sent;
    }
    return rtt;
  }

  /** True when this migration could resume if its channel failed: it then sends its id. */
  #canResume(digests: MigrationDigests | null | undefined): boolean {
    return usesReturnPath(this.uri) && Boolean(digests) && !this.#deps.block &&
      this.#multifd === null && this.#deps.params().resume_grace > 0;
  }

  /** The return path's reader on `channel`: a failure the destination reports ends the migration. */
  #openReturnPath(channel: Channel): SourceReturnPath {
    return new SourceReturnPath(channel, (e) => {
      this.#abort.abort(e);
      this.#channel?.close();
    });
  }

  /**
   * The pre-copy loop threw `e`. When that is the channel failing while the guest
   * still runs (docs/ARCHITECTURE.md, "Resuming an interrupted pre-copy"), waits in
   * `interrupted` for a resume (POST /migrations/current/resume, or resume_auto)
   * and returns the loop's context on the new channel; otherwise, or once the grace
   * period ends or the migration is cancelled, throws.
   */
  async #interrupted(
    e: unknown,
    ctx: OutgoingContext,
    watchdog: ProgressWatchdog,
  ): Promise<OutgoingContext> {
    const { clock } = this.#deps;
    const fatal = !this.#idSent || this.#stopping || this.#state !== "active" ||
      e instanceof StallError || e instanceof DeadlineError || watchdog.error !== null ||
      this.#abort.signal.aborted ||
      !ctx.digests;
    if (fatal) throw e;
    // A destination that failed on purpose sends its reason before it hangs up.
    const rp = this.#returnPath;
    if (rp && !rp.error) await settledWithin(clock, rp.done, REASON_WAIT_MS);
    const grace = this.#deps.params().resume_grace;
    if (rp?.error || grace <= 0 || this.#abort.signal.aborted) throw e;
    const reason = describeError(e);
    watchdog.stop();
    this.#channel?.close();
    const stats = this.#resumeStats;
    stats.interruptions++;
    stats.lastError = reason;
    stats.graceEnds = clock.now() + grace;
    this.#transition("interrupted");
    this.#warn(
      "migration-interrupted",
      `The migration channel failed during pre-copy (${reason}); the guest runs on: resume ` +
        `within ${grace} ms (POST /migrations/current/resume) or the migration fails`,
    );
    // Ends the wait: the grace period is over, or the migration was cancelled.
    const wait = new AbortController();
    const onCancel = () => wait.abort(this.#abort.signal.reason);
    this.#abort.signal.addEventListener("abort", onCancel, { once: true });
    clock.until(stats.graceEnds, wait.signal).then(
      () =>
        wait.abort(
          new Error(
            `The migration was interrupted (${reason}) and not resumed within resume_grace ` +
              `(${grace} ms)`,
          ),
        ),
      () => {},
    );
    try {
      for (let attempt = 0;; attempt++) {
        const req = await this.#nextResume(wait.signal, attempt);
        try {
          const next = await this.#reconnect(req.uri, ctx, watchdog, wait.signal);
          req.settle();
          this.#resumes.refuseAll(new Error("the migration already resumed over another request"));
          return next;
        } catch (err) {
          if (wait.signal.aborted) {
            req.settle(wait.signal.reason);
            throw wait.signal.reason;
          }
          req.settle(err);
          // Automatic retries warn once per interruption, a resume asked for every time.
          if (!req.auto || attempt === 0) {
            this.#warn("resume-failed", `Resuming over ${req.uri} failed: ${describeError(err)}`);
          }
        }
      }
    } finally {
      this.#abort.signal.removeEventListener("abort", onCancel);
      wait.abort();
    }
  }

  /** The next resume to try: one asked for, or with resume_auto, the last URI after a back-off. */
  async #nextResume(signal: AbortSignal, attempt: number): Promise<ResumeRequest> {
    if (!this.#deps.params().resume_auto) return await this.#resumes.next(signal);
    const backoff = new AbortController();
    const delay = RESUME_BACKOFF_MS[Math.min(attempt, RESUME_BACKOFF_MS.length - 1)];
    const timer = this.#deps.clock.sleep(delay, AbortSignal.any([signal, backoff.signal])).then(
      () => ({ uri: this.#lastUri, auto: true, settle: () => {} }),
    );
    try {
      return await Promise.race([
        this.#resumes.next(AbortSignal.any([signal, backoff.signal])),
        timer,
      ]);
    } finally {
      backoff.abort();
      timer.catch(() => {});
    }
  }

  /**
   * Connects to `uri`, asks the destination to resume this migration and reads its
   * received-pages bitmap; on success the pages it lacks go again and the loop's
   * context on the new channel is returned. Throws when refused or unreachable.
   */
  async #reconnect(
    uri: string,
    ctx: OutgoingContext,
    watchdog: ProgressWatchdog,
    signal: AbortSignal,
  ): Promise<OutgoingContext> {
    const { transports, clock, guest } = this.#deps;
    // Bounded by progress_timeout: a destination that never answers leaves it interrupted.
    const limit = new AbortController();
    const bound = Math.min(this.#deps.params().progress_timeout, RESUME_HANDSHAKE_MS);
    clock.until(clock.now() + bound, AbortSignal.any([signal, limit.signal])).then(
      () => limit.abort(new Error(`no answer to the resume request within ${bound} ms`)),
      () => {},
    );
    const stop = AbortSignal.any([signal, limit.signal]);
    let channel: WatchedChannel | null = null;
    try {
      channel = new WatchedChannel(
        await transports.connect(uri, stop, this.#deps.security),
        watchdog,
        { beforeFinish: () => this.#returnPath!.switchover() },
      );
      const ch = channel;
      const onStop = () => ch.close();
      stop.addEventListener("abort", onStop, { once: true });
      let answer;
      try {
        answer = await requestResume(
          channel,
          identityOf(this.#id, ctx.savers.machineType, guest.blocks),
          ctx.digests!,
        );
      } finally {
        stop.removeEventListener("abort", onStop);
      }
      stop.throwIfAborted();
      ctx.savers.ram.resend(answer.maps);
      this.#resumeStats.resumed(answer.held, answer.resend);
      this.#channel = channel;
      this.#lastUri = uri;
      const writer = new StreamWriter(channel, undefined, { turn: this.#deps.turn, clock });
      this.#bytesBefore += this.#writer?.bytes ?? 0;
      this.#writer?.release();
      this.#writer = writer;
      this.#returnPath = this.#openReturnPath(channel);
      watchdog.start();
      this.#transition("active");
      this.#warn(
        "migration-resumed",
        `Resumed over ${uri}: the destination held ${answer.held} pages as sent, ` +
          `${answer.resend} go again (${answer.held * PAGE_SIZE} bytes not sent again)`,
      );
      return { ...ctx, writer, drain: () => this.#drain(writer) };
    } catch (e) {
      channel?.close();
      throw (stop.aborted && !signal.aborted ? stop.reason : e);
    } finally {
      limit.abort();
    }
  }

  #warn(code: string, message: string): void {
    this.#warnings.push({ code, message });
    this.#recorder.event(this.#deps.clock.now(), "warning", `${code}: ${message}`);
    this.#deps.hooks.onWarning(code, message);
  }

  /**
   * pause_before_switchover (QEMU's migration_maybe_pause): with the guest stopped,
   * waits in `pre-switchover` for {@link continue}, which moves it to `device`. While it
   * waits it keeps both ends' progress_timeout from firing: a PING each quarter of
   * it on a return path (the destination sees bytes), the watchdog told otherwise.
   * A cancel rejects the wait; the loop then restarts the guest.
   */
  async #pauseBeforeSwitchover(writer: StreamWriter, watchdog: ProgressWatchdog): Promise<void> {
    const { clock } = this.#deps;
    const signal = this.#abort.signal;
    const continued = new Promise<void>((resolve) => this.#resume = resolve);
    this.#transition("pre-switchover");
    for (;;) {
      signal.throwIfAborted();
      const period = Math.max(10, Math.floor(this.#deps.params().progress_timeout / 4));
      const wake = new AbortController();
      const woken = await Promise.race([
        continued.then(() => true),
        clock.until(clock.now() + period, AbortSignal.any([signal, wake.signal])).then(() => false),
      ]).finally(() => wake.abort());
      signal.throwIfAborted();
      if (woken) return; // continue() moved to device
      watchdog.progress();
      if (this.#returnPath) {
        const value = ++this.#pings;
        await sendPing(writer, value);
        await writer.flush();
        await this.#returnPath.awaitPong(value);
      }
    }
  }

  async #run(): Promise<void> {
    const { guest, transports, clock } = this.#deps;
    const wasRunning = guest.runState === "running";
    // progress_timeout: no byte accepted for that long (connecting included) fails
    // the migration; closing the channel unblocks a write stuck on a stalled peer.
    const returnPath = usesReturnPath(this.uri) &&
      (this.#deps.sections?.profile.returnPath ?? true);
    const watchdog = new ProgressWatchdog(
      () => this.#deps.params().progress_timeout,
      (e) => {
        this.#abort.abort(e);
        this.#channel?.close();
      },
      "the destination accepted no data",
      clock,
    ).start();
    try {
      this.#channel = new WatchedChannel(
        await transports.connect(this.uri, this.#abort.signal, this.#deps.security),
        watchdog,
        { beforeFinish: returnPath ? () => this.#returnPath!.switchover() : undefined },
      );
      if (this.#abort.signal.aborted) this.#channel.close();
      this.#abort.signal.throwIfAborted();
      const writer = new StreamWriter(this.#channel, undefined, { turn: this.#deps.turn, clock });
      this.#writer = writer;
      const caps = this.#deps.capabilities;
      const digests = caps.verify ? new MigrationDigests(guest.blocks) : undefined;
      const params = this.#deps.params();
      if (params.multifd_channels > 1) {
        this.#multifd = new MultifdSender(params.multifd_channels, {
          blocks: guest.blocks,
          ...(digests ? { tables: digests.ram.map((r) => r.table) } : {}),
          compression: params.compress_method === "none"
            ? null
            : { codec: params.compress_method, level: params.compress_level },
          onBytes: (n) => writer.addSideBytes(n),
          onPacket: (zero, normal, bytes) => {
            const stats = this.#ram!.stats;
            stats.duplicate += zero;
            stats.normal += normal;
            stats.transferred += bytes;
          },
          onError: (e) => {
            this.#abort.abort(e);
            this.#channel?.close();
          },
        });
      }
      const savers = createSavers(this.#deps.sections ?? defaultSections(), {
        guest,
        now: clock.now,
        params: this.#deps.params(),
        capabilities: caps,
        ...(this.#deps.block ? { block: this.#deps.block } : {}),
        ...(digests ? { digests } : {}),
        ...(/^(file|exec):/.test(this.uri) ? { snapshot: true } : {}),
        ...(this.#multifd ? { multifd: this.#multifd } : {}),
      });
      this.#ram = savers.ram;
      const block = savers.live.find((e) => e.saver instanceof BlockSaver)?.saver;
      this.#block = block instanceof BlockSaver ? block : null;
      const ctx = {
        guest,
        writer,
        savers,
        digests,
        clock,
        params: this.#deps.params,
        signal: this.#abort.signal,
        capabilities: this.#deps.capabilities,
        progress: {
          active: () => {
            this.#setupTime ??= clock.now() - this.#startedAt;
            this.#transition("active");
          },
          window: (w: WindowStats, expected: number, maxSize: number) => {
            this.#mbps = (w.bandwidth * 8) / 1000;
            const ram = this.#ram!;
            const pages = ram.stats.normal + ram.stats.duplicate;
            this.#pagesPerSecond = ((pages - this.#lastPages) * 1000) / w.ms;
            this.#lastPages = pages;
            this.#expectedDowntime = expected;
            this.#recorder.window(clock.now(), {
              bytes: w.bytes,
              ms: w.ms,
              bandwidth: w.bandwidth,
              totalBytes: writer.bytes,
              pagesSent: pages,
              maxSize,
              remaining: ram.remainingBytes,
              expectedDowntime: expected,
              throttle: this.#throttle,
              pass: ram.stats.dirtySyncCount,
            });
            this.#deps.hooks.onProgress();
          },
          pass: (count: number, dirty: number) => {
            if (count !== this.#recordedPass) {
              this.#recordedPass = count;
              this.#recorder.pass(clock.now(), count, this.#ram!.lastSyncAdded, writer.bytes);
            }
            this.#deps.hooks.onPass(count, dirty);
          },
          stopped: () => {
            this.#stopping = true;
          },
          throttled: (percent: number) => {
            this.#throttle = percent;
            this.#recorder.event(clock.now(), "throttle", String(percent));
          },
          warn: (code: string, message: string) => this.#warn(code, message),
        },
        drain: returnPath ? () => this.#drain(writer) : undefined,
        startedAt: this.#startedAt,
        beforeSwitchover: caps.pause_before_switchover
          ? () => this.#pauseBeforeSwitchover(writer, watchdog)
          : undefined,
      };
      await writeSetup(ctx);
      if (returnPath) {
        await sendOpenReturnPath(writer);
        const resumable = this.#canResume(digests);
        if (resumable) await sendMigrationId(writer, this.#id);
        // From here on the destination may report a failure at any time.
        this.#returnPath = this.#openReturnPath(this.#channel);
        if (resumable) {
          // Only a destination that answered is loading this migration: before its PONG, a
          // refusal (another secret, a peer it dropped) looks like a cut, and fails as one.
          const value = ++this.#pings;
          await sendPing(writer, value);
          await writer.flush();
          await this.#returnPath.awaitPong(value);
          this.#idSent = true;
        }
      }
      const multifd = this.#multifd;
      if (multifd) {
        if (!this.#returnPath) throw new Error(`multifd needs a return path (tcp: or unix:)`);
        await openMultifd(multifd, writer, async () => {
          const value = ++this.#pings;
          await sendPing(writer, value);
          await writer.flush();
          await this.#returnPath!.awaitPong(value);
        }, async () =>
          new WatchedChannel(
            await transports.connect(this.uri, this.#abort.signal, this.#deps.security),
            watchdog,
          ));
      }
      this.#abort.signal.throwIfAborted();
      let run: OutgoingContext = ctx;
      let result: OutgoingResult;
      for (;;) {
        try {
          result = await runPrecopy(run);
          break;
        } catch (e) {
          run = await this.#interrupted(e, run, watchdog);
        }
      }
      this.#downtime = result.downtime;
      this.#channel.close();
      this.#transition("completed");
    } catch (e) {
      this.#resume = null;
      // on_timeout cancel: a cancel the engine asked for itself, saying why.
      const timedOut = e instanceof DeadlineError && e.action === "cancel" &&
        this.#state === "active";
      if (timedOut) this.#transition("cancelling");
      // A destination that failed sends its reason before it hangs up: when the
      // stream broke, read it (the connection is ending anyway) before closing.
      const rp = this.#returnPath;
      if (rp && !rp.error && this.#state !== "cancelling" && !watchdog.error) {
        await settledWithin(clock, rp.done, REASON_WAIT_MS);
      }
      this.#channel?.close();
      // The guest may have been stopped for the final pass; the loop restarts it,
      // but make sure a running guest is running after any failure.
      if (wasRunning && guest.runState !== "running") guest.start();
      if (timedOut) this.#transition("cancelled", (e as DeadlineError).message);
      else if (this.#state === "cancelling") this.#transition("cancelled");
      else {
        this.#transition(
          "failed",
          describeError(this.#returnPath?.error ?? watchdog.error ?? e),
        );
      }
    } finally {
      watchdog.stop();
      this.#resumes.refuseAll(new Error(`the migration is ${this.#state}`));
      this.#multifd?.close();
      this.#writer?.release();
      // auto-converge's throttle ends with the migration, whatever its outcome.
      if (this.#throttle > 0) guest.setThrottle(0);
    }
  }
}

/** How long a resume's connection and handshake may take, at most, ms (progress_timeout is shorter). */
const RESUME_HANDSHAKE_MS = 30_000;

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}
