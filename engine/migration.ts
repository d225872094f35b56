import type { Channel, ChannelSecurity, Transports } from "../transports/transport.ts";
import type { Guest } from "../vm/guest.ts";
import { PAGE_SIZE } from "./format/constants.ts";
import { type Clock, settledWithin } from "./clock.ts";
import { describeError } from "./errors.ts";
import { DeadlineError } from "./deadline.ts";
import { StreamWriter } from "./format/writer.ts";
import { createSavers, runPrecopy, writeSetup } from "./outgoing.ts";
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

/** States after which nothing more happens. */
export const FINAL_STATES: ReadonlySet<MigrationStatus> = new Set([
  "cancelled",
  "completed",
  "failed",
]);

const TRANSITIONS: Record<MigrationStatus, readonly MigrationStatus[]> = {
  none: ["setup"],
  setup: ["active", "cancelling", "failed"],
  active: ["completed", "cancelling", "failed", "pre-switchover"],
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
          ? round3(((this.#writer?.bytes ?? 0) * 8) / elapsed / 1000)
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
    return info;
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
      const savers = createSavers(this.#deps.sections ?? defaultSections(), {
        guest,
        now: clock.now,
        params: this.#deps.params(),
        capabilities: caps,
        ...(this.#deps.block ? { block: this.#deps.block } : {}),
        ...(digests ? { digests } : {}),
        ...(/^(file|exec):/.test(this.uri) ? { snapshot: true } : {}),
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
            this.#setupTime = clock.now() - this.#startedAt;
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
          stopped: () => {},
          throttled: (percent: number) => {
            this.#throttle = percent;
            this.#recorder.event(clock.now(), "throttle", String(percent));
          },
          warn: (code: string, message: string) => {
            this.#warnings.push({ code, message });
            this.#recorder.event(clock.now(), "warning", `${code}: ${message}`);
            this.#deps.hooks.onWarning(code, message);
          },
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
        // From here on the destination may report a failure at any time.
        this.#returnPath = new SourceReturnPath(this.#channel, (e) => {
          this.#abort.abort(e);
          this.#channel?.close();
        });
      }
      this.#abort.signal.throwIfAborted();
      const result = await runPrecopy(ctx);
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
      this.#writer?.release();
      // auto-converge's throttle ends with the migration, whatever its outcome.
      if (this.#throttle > 0) guest.setThrottle(0);
    }
  }
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}
