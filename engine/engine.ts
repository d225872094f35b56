import type { Transports } from "../transports/transport.ts";
import type { Guest, RunState } from "../vm/guest.ts";
import { type Clock, systemClock } from "./clock.ts";
import { IncomingMigration } from "./destination.ts";
import { DirtyRateMeter } from "./dirty_rate.ts";
import type {
  IncomingInfo,
  IncomingStatus,
  MigrationInfo,
  MigrationRecord,
  MigrationStatus,
  PeerKind,
  Timeline,
} from "./contract.ts";
import { multifdRefusal } from "./multifd/setup.ts";
import { MigrationHistory } from "./history.ts";
import { EngineError } from "./errors.ts";
import type { SectionRegistry } from "./sections/section.ts";
import { defaultSections } from "./sections/registry.ts";
import { FINAL_STATES, Migration } from "./migration.ts";
import { bootEventId, DEFAULT_HISTORY, Notifier } from "./notifier.ts";
import {
  type Capabilities,
  channelSecurity,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  type Parameters,
  UNSUPPORTED_CAPABILITIES,
  validateParameters,
} from "./params.ts";

/** Events the engine publishes (the SSE stream's source). */
export type EngineEvent =
  | {
    type: "state";
    from: MigrationStatus;
    to: MigrationStatus;
    time: number;
    error?: string;
  }
  | { type: "pass"; pass: number; dirty_pages: number; time: number }
  | { type: "warning"; code: string; message: string; time: number }
  | { type: "progress"; info: MigrationInfo; time: number }
  | {
    type: "incoming";
    from: IncomingStatus;
    to: IncomingStatus;
    time: number;
    error?: string;
    info: IncomingInfo;
  }
  | { type: "runstate"; from: RunState; to: RunState; time: number };

/** A reason that forbids migration right now (QEMU's migrate_add_blocker). */
export interface Blocker {
  readonly id: string;
  readonly reason: string;
}

/** Options of POST /migrations. */
export interface MigrateOptions {
  blk?: boolean;
  inc?: boolean;
  detach?: boolean;
}

/** What the engine is built from. */
export interface EngineDeps {
  readonly guest: Guest;
  readonly transports: Transports;
  /** Every timing and timestamp of the engine and its API (default the real clock). */
  readonly clock?: Clock;
  /** Start the guest after an incoming migration (default true). */
  readonly autostart?: boolean;
  /**
   * Gives the event loop one I/O turn (transports/loop_turn.ts); migrations call it
   * every few ms so the API answers during a full-speed stream. Default: a timer.
   */
  readonly turn?: () => Promise<void>;
  /** The sections this engine sends and takes (default: ferry's own, defaultSections()). */
  readonly sections?: SectionRegistry;
  /**
   * Id of the first event (default {@link bootEventId}: from the clock's wall time, so ids
   * never repeat across restarts and a reconnecting SSE client is never replayed
   * another process's events).
   */
  readonly firstEventId?: number;
  /** Where past migrations are kept (default: in memory only). */
  readonly history?: MigrationHistory;
}

/** The incoming migration's id and what its history record needs besides its info. */
interface IncomingMeta {
  readonly id: string;
  readonly startedAt: number;
  /** A peer's stream was loaded (a disarm before one is no migration to remember). */
  began: boolean;
}

/**
 * The migration controller (QEMU's migration.c): capabilities, parameters,
 * blockers, at most one outgoing and one incoming migration, and the events that
 * describe them. It never touches sockets or HTTP.
 */
export class Engine {
  /** Every state change, pass and progress report. */
  readonly events: Notifier<EngineEvent>;
  /** The guest's dirty-rate meter; it yields the dirty log to any migration. */
  readonly dirtyRate: DirtyRateMeter;
  readonly #guest: Guest;
  readonly #transports: Transports;
  readonly #clock: Clock;
  readonly #autostart: boolean;
  readonly #turn: (() => Promise<void>) | undefined;
  readonly #sections: SectionRegistry;
  #params: Parameters = { ...DEFAULT_PARAMETERS };
  #caps: Capabilities = { ...DEFAULT_CAPABILITIES };
  #blockers = new Map<string, Blocker>();
  #nextBlocker = 1;
  #migration: Migration | null = null;
  #incoming: IncomingMigration | null = null;
  /** True while listenIncoming awaits its listener (not yet in #incoming). */
  #arming = false;
  #incomingMeta: IncomingMeta | null = null;
  /** Past migrations, both directions. */
  readonly history: MigrationHistory;
  readonly #unsubscribeGuest: () => void;

  constructor(deps: EngineDeps) {
    this.#clock = deps.clock ?? systemClock;
    this.events = new Notifier<EngineEvent>(
      DEFAULT_HISTORY,
      deps.firstEventId ?? bootEventId(this.#clock.wall()),
    );
    this.#guest = deps.guest;
    this.#transports = deps.transports;
    this.#autostart = deps.autostart ?? true;
    this.#turn = deps.turn;
    this.#sections = deps.sections ?? defaultSections();
    this.history = deps.history ?? MigrationHistory.memory();
    this.#unsubscribeGuest = this.#guest.onRunStateChange((from, to) =>
      this.events.emit({ type: "runstate", from, to, time: this.#clock.wall() })
    );
    this.dirtyRate = new DirtyRateMeter({
      guest: this.#guest,
      clock: this.#clock,
      busy: () =>
        this.#migration?.isActive
          ? "a migration is active"
          : this.#incoming?.isActive || this.#arming
          ? "an incoming migration is armed"
          : null,
    });
  }

  /** The clock every timing and timestamp of this engine comes from (its API uses it too). */
  get clock(): Clock {
    return this.#clock;
  }

  /** The guest this engine migrates. */
  get guest(): Guest {
    return this.#guest;
  }

  /** The transports migrations open channels with (the planner probes a destination through them). */
  get transports(): Transports {
    return this.#transports;
  }

  /** Current parameters (a copy). */
  get parameters(): Parameters {
    return { ...this.#params };
  }

  /** Applies a parameter patch; a running migration sees it at its next window. */
  setParameters(patch: Partial<Parameters>): Parameters {
    validateParameters(patch, this.#guest.blocks.reduce((n, b) => n + b.length, 0));
    this.#params = { ...this.#params, ...patch };
    return this.parameters;
  }

  /** Current capabilities (a copy). */
  get capabilities(): Capabilities {
    return { ...this.#caps };
  }

  /** Changes capabilities; refused while a migration is active or for ones ferry cannot honour. */
  setCapabilities(patch: Partial<Capabilities>): Capabilities {
    if (this.#migration?.isActive) {
      throw new EngineError(
        "migration-active",
        "Cannot change capabilities while a migration is active",
      );
    }
    if (this.#incoming?.isActive || this.#arming) {
      throw new EngineError(
        "incoming-active",
        "Cannot change capabilities while an incoming migration is armed: disarm it first (DELETE /migrations/incoming)",
      );
    }
    for (const [key, value] of Object.entries(patch) as [keyof Capabilities, boolean][]) {
      const why = UNSUPPORTED_CAPABILITIES[key];
      if (value && why) {
        throw new EngineError(
          "capability-unsupported",
          `Cannot enable capability "${key}": ${why}`,
          {
            capability: key,
          },
        );
      }
    }
    this.#caps = { ...this.#caps, ...patch };
    return this.capabilities;
  }

  /** Current blockers. */
  get blockers(): Blocker[] {
    return [...this.#blockers.values()];
  }

  /**
   * Adds a migration blocker with a reason; returns it with its id. Refused
   * (`migration-active`) while a migration runs, as QEMU refuses: the migration
   * would otherwise complete past a blocker that says it must not.
   */
  addBlocker(reason: string): Blocker {
    if (this.#migration?.isActive) {
      throw new EngineError(
        "migration-active",
        "Cannot add a migration blocker while a migration is active: cancel it first",
      );
    }
    const blocker = { id: String(this.#nextBlocker++), reason };
    this.#blockers.set(blocker.id, blocker);
    return blocker;
  }

  /** Removes a blocker; throws `blocker-not-found` for an unknown id. */
  removeBlocker(id: string): Blocker {
    const blocker = this.#blockers.get(id);
    if (!blocker) {
      throw new EngineError("blocker-not-found", `No migration blocker with id "${id}"`);
    }
    this.#blockers.delete(id);
    return blocker;
  }

  /**
   * Starts an outgoing migration to `uri` (QEMU's migrate). Throws `migration-active`,
   * `migration-blocked` (with the reasons) or a TransportError for a bad URI; a
   * failure to connect is reported through the migration's `failed` state.
   */
  migrate(uri: string, opts: MigrateOptions = {}): MigrationInfo {
    if (this.#migration?.isActive) {
      throw new EngineError("migration-active", "A migration is already in progress");
    }
    if (this.#incoming?.isActive || this.#arming) {
      throw new EngineError("incoming-active", "This ferry is waiting for an incoming migration");
    }
    const guestBlocker = this.#guest.migrationBlocker?.() ?? null;
    if (this.#blockers.size > 0 || guestBlocker !== null) {
      const reasons = [
        ...this.blockers.map((b) => b.reason),
        ...(guestBlocker ? [guestBlocker] : []),
      ];
      throw new EngineError("migration-blocked", `Migration is blocked: ${reasons.join("; ")}`, {
        reasons,
      });
    }
    if ((opts.blk || opts.inc) && !this.#guest.disk) {
      throw new EngineError(
        "capability-unsupported",
        "Block migration (blk/inc) needs a disk: this guest has none (start ferry with --disk)",
        { capability: opts.blk ? "blk" : "inc" },
      );
    }
    const state = this.#guest.runState;
    if (state === "inmigrate" || state === "finish-migrate") {
      throw new EngineError("guest-incomplete", `Cannot migrate a guest in state "${state}"`);
    }
    if (this.#caps.xbzrle && (this.#params.compress_method !== "none" || this.#caps.page_refs)) {
      // As in QEMU, where multifd compression and XBZRLE exclude each other.
      const what = this.#caps.page_refs
        ? "the page_refs capability"
        : `compress_method ${this.#params.compress_method}`;
      throw new EngineError(
        "capability-unsupported",
        `Cannot migrate with both xbzrle and ${what}: turn one of them off`,
        { capability: this.#caps.page_refs ? "page_refs" : "xbzrle" },
      );
    }
    this.#transports.validate(uri, "connect");
    const multifd = this.#params.multifd_channels;
    const refused = multifdRefusal(multifd, uri, this.#guest, this.#sections.profile.peer);
    if (refused !== null) {
      throw new EngineError("capability-unsupported", refused, { parameter: "multifd_channels" });
    }
    if (multifd > 1 && (this.#caps.xbzrle || this.#caps.page_refs)) {
      // Pages of one pass go over every channel at once: a delta or a reference could
      // arrive before the page it builds on (docs/ARCHITECTURE.md, "Multifd").
      const capability = this.#caps.xbzrle ? "xbzrle" : "page_refs";
      throw new EngineError(
        "capability-unsupported",
        `Cannot migrate with both multifd_channels ${multifd} and ${capability}: turn one of ` +
          `them off`,
        { capability },
      );
    }
    const migration: Migration = this.#migration = new Migration(uri, {
      guest: this.#guest,
      transports: this.#transports,
      clock: this.#clock,
      params: () => this.#params,
      capabilities: { ...this.#caps },
      security: channelSecurity(this.#params),
      sections: this.#sections,
      ...(this.#turn ? { turn: this.#turn } : {}),
      ...(opts.blk || opts.inc ? { block: { incremental: Boolean(opts.inc) } } : {}),
      hooks: {
        onStateChange: (from, to, error) => {
          if (FINAL_STATES.has(to)) this.history.add(migration.record(), migration.timeline());
          this.events.emit({
            type: "state",
            from,
            to,
            time: this.#clock.wall(),
            ...(error ? { error } : {}),
          });
        },
        onPass: (pass, dirty) =>
          this.events.emit({ type: "pass", pass, dirty_pages: dirty, time: this.#clock.wall() }),
        onProgress: () =>
          this.events.emit({ type: "progress", info: this.current(), time: this.#clock.wall() }),
        onWarning: (code, message) =>
          this.events.emit({ type: "warning", code, message, time: this.#clock.wall() }),
      },
    });
    return this.#migration.info();
  }

  /** The current (or last) migration's info; `status: "none"` before any. */
  current(): MigrationInfo {
    return this.#migration?.info() ?? { status: "none" };
  }

  /**
   * Resumes the interrupted migration over a new channel to `uri` (docs/ARCHITECTURE.md,
   * "Resuming an interrupted pre-copy"); answers once it carries on. Throws
   * `not-interrupted`, or `resume-refused` with the destination's reason.
   */
  async resumeMigration(uri: string): Promise<MigrationInfo> {
    const migration = this.#migration;
    if (!migration || migration.state !== "interrupted") {
      throw new EngineError(
        "not-interrupted",
        `Cannot resume: ${
          migration ? `the migration is ${migration.state}` : "there was no migration"
        }, not interrupted`,
      );
    }
    this.#transports.validate(uri, "connect");
    return await migration.resume(uri);
  }

  /** The current Migration object, if any (for tests awaiting `done`). */
  get migration(): Migration | null {
    return this.#migration;
  }

  /**
   * Cancels the active migration (QEMU's migrate_cancel). `cancelled` is true when
   * the migration is now being cancelled — by this call, or by an earlier one still
   * winding down (`cancelling`) — and false when nothing was active (a no-op).
   */
  cancel(): { cancelled: boolean; info: MigrationInfo } {
    const cancelled = (this.#migration?.cancel() ?? false) ||
      this.#migration?.state === "cancelling";
    return { cancelled, info: this.current() };
  }

  /**
   * Lets a migration waiting in `pre-switchover` (pause_before_switchover) send the
   * rest and complete (QEMU's migrate-continue). Throws `not-paused` otherwise.
   */
  continueMigration(): MigrationInfo {
    if (!this.#migration?.continue()) {
      throw new EngineError(
        "not-paused",
        `No migration is waiting in pre-switchover (the current one is "${
          this.#migration?.state ?? "none"
        }"): continue applies with the pause_before_switchover capability, once the guest stopped`,
      );
    }
    return this.current();
  }

  /**
   * Arms an incoming migration on `uri` (QEMU's migrate-incoming): the guest goes to
   * `inmigrate` and the stream, when it comes, replaces its RAM and device state.
   */
  async listenIncoming(uri: string, peer?: PeerKind): Promise<IncomingInfo> {
    const mine = this.#sections.profile.peer ?? "ferry";
    if (peer !== undefined && peer !== mine) {
      throw new EngineError(
        "invalid-parameter",
        `This ferry takes streams from a ${mine} (--peer ${mine}), not from a ${peer}: ` +
          (peer === "qemu" ? "start one with --peer qemu" : "use a ferry started without --peer"),
        { parameter: "peer" },
      );
    }
    if (this.#incoming?.isActive || this.#arming) {
      throw new EngineError("incoming-active", "An incoming migration is already armed");
    }
    if (this.#migration?.isActive) {
      throw new EngineError(
        "migration-active",
        "Cannot receive while an outgoing migration is active",
      );
    }
    const state = this.#guest.runState;
    if (state === "running" || state === "finish-migrate") {
      throw new EngineError(
        "guest-running",
        `Cannot arm an incoming migration while the guest is "${state}": stop it first (POST /vm/stop)`,
      );
    }
    this.#transports.validate(uri, "listen");
    const refused = multifdRefusal(
      this.#params.multifd_channels,
      uri,
      this.#guest,
      this.#sections.profile.peer,
    );
    if (refused !== null) {
      throw new EngineError("capability-unsupported", refused, { parameter: "multifd_channels" });
    }
    const security = channelSecurity(this.#params);
    const meta: IncomingMeta = {
      id: crypto.randomUUID(),
      startedAt: this.#clock.wall(),
      began: false,
    };
    const incoming = new IncomingMigration(uri, {
      guest: this.#guest,
      transports: this.#transports,
      clock: this.#clock,
      autostart: this.#autostart,
      security,
      progressTimeout: () => this.#params.progress_timeout,
      verify: this.#caps.verify,
      pageBudget: () => this.#params.incoming_page_budget,
      compression: () => this.#params.compress_method,
      pageRefs: this.#caps.page_refs,
      resumeGrace: () => this.#params.resume_grace,
      resumeAuto: () => this.#params.resume_auto,
      multifdChannels: this.#params.multifd_channels,
      sections: this.#sections,
      ...(this.#turn ? { turn: this.#turn } : {}),
      onStateChange: (from, to, error) => {
        if (to === "active") meta.began = true;
        const info = { id: meta.id, ...incoming.info() };
        if ((to === "completed" || to === "failed" || to === "cancelled") && meta.began) {
          this.history.add(this.#incomingRecord(meta, info));
        }
        this.events.emit({
          type: "incoming",
          from,
          to,
          time: this.#clock.wall(),
          ...(error ? { error } : {}),
          info,
        });
      },
    });
    this.#arming = true;
    try {
      await incoming.listen();
    } finally {
      this.#arming = false;
    }
    this.#incoming = incoming;
    this.#incomingMeta = meta;
    return this.incomingInfo();
  }

  /** An incoming migration as the history keeps it. */
  #incomingRecord(meta: IncomingMeta, info: IncomingInfo): MigrationRecord {
    const rec: MigrationRecord = {
      id: meta.id,
      direction: "incoming",
      status: info.status,
      uri: info.uri,
      started_at: meta.startedAt,
      bytes: info.bytes_received,
    };
    if (info.total_time !== undefined) {
      rec.total_time = info.total_time;
      if (info.status !== "active" && info.status !== "listening") {
        rec.ended_at = Math.round(this.#clock.wall());
      }
    }
    if (info.error_desc !== undefined) rec.error_desc = info.error_desc;
    return rec;
  }

  /**
   * Every migration this ferry knows, newest first: the current outgoing or
   * incoming one while it runs, then the history (both directions).
   */
  migrations(): MigrationRecord[] {
    const live: MigrationRecord[] = [];
    if (this.#migration?.isActive) live.push(this.#migration.record());
    if (this.#incoming?.state === "active" && this.#incomingMeta) {
      live.push(this.#incomingRecord(this.#incomingMeta, this.incomingInfo()));
    }
    return [...live, ...this.history.list()];
  }

  /** One migration by id, current or past, with its explanation; throws `migration-not-found`. */
  migrationRecord(id: string): MigrationRecord {
    if (this.#migration?.id === id && this.#migration.isActive) return this.#migration.record();
    if (this.#incomingMeta?.id === id && this.#incoming?.state === "active") {
      return this.#incomingRecord(this.#incomingMeta, this.incomingInfo());
    }
    const rec = this.history.get(id);
    if (!rec) {
      throw new EngineError("migration-not-found", `No migration with id "${id}" is known here`);
    }
    return rec;
  }

  /** The flight recorder's timeline of one outgoing migration, current or recent. */
  timeline(id: string): Timeline {
    if (this.#migration?.id === id) return this.#migration.timeline();
    const tl = this.history.timeline(id);
    if (tl) return tl;
    const rec = this.migrationRecord(id);
    throw new EngineError(
      "migration-not-found",
      rec.direction === "incoming"
        ? `Migration "${id}" came in: its timeline is recorded by its source`
        : `The timeline of migration "${id}" is no longer kept (only the last ones are)`,
    );
  }

  /**
   * Disarms the incoming side: stops listening, or abandons a stream being loaded
   * (the partial guest stays unstartable). `cancelled` is false when nothing was
   * armed (a no-op).
   */
  disarmIncoming(): { cancelled: boolean; info: IncomingInfo } {
    const cancelled = this.#incoming?.cancel() ?? false;
    return { cancelled, info: this.incomingInfo() };
  }

  /** The incoming side's info; `status: "none"` when never armed. */
  incomingInfo(): IncomingInfo {
    if (!this.#incoming) return { status: "none", bytes_received: 0 };
    return {
      ...(this.#incomingMeta ? { id: this.#incomingMeta.id } : {}),
      ...this.#incoming.info(),
    };
  }

  /**
   * Listens for the source's resume of the interrupted incoming migration, on `uri`
   * or the address its stream came to. Throws `not-interrupted` otherwise.
   */
  async resumeIncoming(uri?: string): Promise<IncomingInfo> {
    const incoming = this.#incoming;
    if (!incoming || incoming.state !== "interrupted") {
      throw new EngineError(
        "not-interrupted",
        `Cannot resume: ${
          incoming ? `the incoming migration is ${incoming.state}` : "nothing was received"
        }, not interrupted`,
      );
    }
    if (uri !== undefined) this.#transports.validate(uri, "listen");
    return await incoming.resume(uri);
  }

  /** The current IncomingMigration, if any (for tests awaiting `done`). */
  get incoming(): IncomingMigration | null {
    return this.#incoming;
  }

  /** Starts the guest (QEMU's cont); refused while it waits for or holds a partial stream. */
  startGuest(): void {
    const state = this.#guest.runState;
    if (state === "inmigrate") {
      throw new EngineError(
        "guest-incomplete",
        "Cannot start the guest: it is waiting for an incoming migration or holds a partial one",
      );
    }
    if (state === "finish-migrate") {
      throw new EngineError(
        "migration-active",
        "Cannot start the guest during migration switchover",
      );
    }
    const blocker = this.#guest.startBlocker?.() ?? null;
    if (blocker !== null) {
      throw new EngineError("guest-not-runnable", `Cannot start the guest: ${blocker}`);
    }
    if (this.#guest.disk?.incomplete) {
      throw new EngineError(
        "guest-incomplete",
        `Cannot start the guest: its disk image ${this.#guest.disk.path} holds an unfinished incoming block migration`,
      );
    }
    if (state !== "running") this.#guest.start();
  }

  /** Stops the guest (QEMU's stop). */
  stopGuest(): void {
    const state = this.#guest.runState;
    if (state === "running") this.#guest.stop("paused");
  }

  /** Cancels everything and waits for it to wind down. */
  async close(): Promise<void> {
    this.dirtyRate.cancel("ferry is closing");
    this.#migration?.cancel();
    this.#incoming?.cancel();
    await this.#migration?.done;
    await this.#incoming?.done;
    await this.dirtyRate.done;
    await this.history.flushed;
    this.#unsubscribeGuest();
  }
}
