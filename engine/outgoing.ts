/**
 * The migration loop (QEMU's migration_thread and qemu_savevm_state_*): it writes
 * the stream's framing and asks each section's saver, through the registry, for
 * its payloads (docs/ARCHITECTURE.md, "Flow of one migration").
 * @module
 */
import type { Guest, RunState } from "../vm/guest.ts";
import type { Clock } from "./clock.ts";
import { PAGE_SIZE, Section } from "./format/constants.ts";
import type { StreamWriter } from "./format/writer.ts";
import type { Capabilities, Parameters } from "./params.ts";
import { AutoConverge } from "./auto_converge.ts";
import { ConvergenceWatch, type Escalation, takeEscalation } from "./deadline.ts";
import { StallDetector } from "./stall.ts";
import { RateLimiter, WINDOW_MS, type WindowStats } from "./rate_limiter.ts";
import { RamSaver } from "./sections/ram.ts";
import type { DeviceSaver, LiveSaver, SaveContext, SectionRegistry } from "./sections/section.ts";
import type { MigrationDigests } from "./integrity.ts";
import { sharedKernels } from "./wasm/kernels.ts";

/** A section's saver for one migration, with what its framing needs. */
interface SaverEntry<T> {
  readonly id: number;
  readonly name: string;
  readonly version: number;
  readonly saver: T;
}

/** The savers of one migration: its live sections, its device sections, and `ram` among them. */
export interface Savers {
  /** Live sections in the order of a round: those with a per-turn cap first, then by id. */
  readonly live: readonly SaverEntry<LiveSaver>[];
  readonly devices: readonly SaverEntry<DeviceSaver>[];
  /** The `ram` section's saver: the loop reads its dirty-log passes. */
  readonly ram: RamSaver;
  /** The machine type the configuration section names (the registry's). */
  readonly machineType: string;
}

/** Asks every registered section for its saver; sections that return null are not carried. */
export function createSavers(registry: SectionRegistry, ctx: SaveContext): Savers {
  const live: SaverEntry<LiveSaver>[] = [];
  const devices: SaverEntry<DeviceSaver>[] = [];
  for (const { id, section } of registry.entries) {
    const saver = section.saver(ctx);
    if (saver === null) continue;
    const entry = { id, name: section.name, version: section.version };
    if (section.kind === "live") live.push({ ...entry, saver: saver as LiveSaver });
    else devices.push({ ...entry, saver: saver as DeviceSaver });
  }
  const ram = live.find((e) => e.saver instanceof RamSaver)?.saver;
  if (!(ram instanceof RamSaver)) throw new Error(`no "ram" section is registered`);
  live.sort((a, b) =>
    Number(b.saver.turnBytes !== undefined) - Number(a.saver.turnBytes !== undefined)
  );
  return { live, devices, ram, machineType: registry.outgoingMachine };
}

/** What the migration loop reports while it runs. */
export interface OutgoingProgress {
  /**
   * Window measurements: bandwidth in bytes/ms, expected downtime in ms, and
   * max_size (what may be left to switch over, bytes) for the flight recorder.
   */
  window(stats: WindowStats, expectedDowntime: number, maxSize: number): void;
  /** A dirty-log sync finished a pass. */
  pass(count: number, dirtyPages: number): void;
  /** The setup phase is written; the loop starts iterating. */
  active(): void;
  /** The guest was stopped for the final pass. */
  stopped(at: number): void;
  /** auto-converge changed the vCPU throttle (percent). */
  throttled(percent: number): void;
  /** Something the operator should know (the limit cannot be met, a stall action was taken). */
  warn(code: string, message: string): void;
}

/** Everything the loop needs; it never sees sockets, only the writer. */
export interface OutgoingContext {
  readonly guest: Guest;
  readonly writer: StreamWriter;
  /** The sections this migration carries (createSavers). */
  readonly savers: Savers;
  /** With `verify`: the digests the sections keep, sent in the vmdescription. */
  readonly digests?: MigrationDigests | null;
  readonly clock: Clock;
  /** Current parameters, read live at every window. */
  readonly params: () => Readonly<Parameters>;
  /** Aborts on cancel. */
  readonly signal: AbortSignal;
  /** Capabilities in force (they cannot change while a migration is active). */
  readonly capabilities: Readonly<Capabilities>;
  readonly progress: OutgoingProgress;
  /**
   * With a return path: waits until the destination has loaded everything sent so
   * far, then returns the bare round-trip time (ms). The loop calls it before it
   * stops the guest, so bytes queued in socket buffers and on the link are not
   * paid for in the downtime; the round trip counts into the expected downtime.
   */
  readonly drain?: () => Promise<number>;
  /** When the migration started (the completion deadline counts from it); default: now. */
  readonly startedAt?: number;
  /**
   * With `pause_before_switchover`: called once the guest is stopped, before the
   * rest is sent; resolves when the operator continues, rejects on a cancel.
   */
  readonly beforeSwitchover?: () => Promise<void>;
}

/** The result of a finished pre-copy migration. */
export interface OutgoingResult {
  /** Guest stopped → stream complete, ms. */
  readonly downtime: number;
  /** Run state the guest had when the final pass began. */
  readonly wasRunning: boolean;
}

/** Writes the stream header and each live section's START (QEMU's qemu_savevm_state_begin). */
export async function writeSetup(ctx: OutgoingContext): Promise<void> {
  const w = ctx.writer;
  await w.header();
  await w.configuration(ctx.savers.machineType);
  ctx.savers.ram.sync(); // clear the guest's log: the migration bitmap already has every page
  for (const { id, name, version, saver } of byId(ctx.savers.live)) {
    await w.sectionStart(Section.START, id, name, 0, version);
    await saver.setup(w);
    await w.footer(id);
  }
  await w.flush();
}

/** Entries in section id order (the order of START, END and FULL sections). */
function byId<T extends { readonly id: number }>(entries: readonly T[]): T[] {
  return [...entries].sort((a, b) => a.id - b.id);
}

/**
 * Dirty-log syncs in a row without a new low (1 % below the last) after which a
 * migration whose downtime limit the round trip alone exceeds switches over: the
 * smallest downtime it can reach.
 */
export const FLOOR_SYNCS = 3;

/**
 * The pre-copy loop (QEMU 1.6's migration_thread): 100 ms windows with a byte
 * budget of max_bandwidth/10; after each window the bandwidth estimate sets
 * max_size = bandwidth × (downtime_limit − round trip); sections iterate while
 * pending ≥ max_size, then the guest stops and the rest goes out unthrottled.
 *
 * Two cases never converge that way (docs/ARCHITECTURE.md, "Convergence"):
 * - the round trip and the final sync alone reach the limit (max_size is 0): the
 *   loop warns once and switches over when what is left, looked at after each
 *   drain or sync, stops reaching new lows: the smallest downtime it can reach;
 * - what is left stops shrinking (the guest dirties as fast as the link sends):
 *   after `stall_windows` windows without a new low, `stall_action` fails the
 *   migration, switches over now, or steps the throttle up.
 */
/** Names what makes the downtime limit unreachable: the round trip, the final sync, or both. */
function unachievableWhy(rtt: number, syncMs: number): string {
  const trip = `the round trip to the destination (${Math.round(rtt)} ms)`;
  const sync = `the dirty-log sync with the guest stopped (${Math.round(syncMs)} ms)`;
  if (syncMs < 1) return trip[0].toUpperCase() + trip.slice(1);
  if (rtt < 1) return sync[0].toUpperCase() + sync.slice(1);
  return `The round trip (${Math.round(rtt)} ms) plus ${sync}`;
}

export async function runPrecopy(ctx: OutgoingContext): Promise<OutgoingResult> {
  const { writer: w, clock, signal } = ctx;
  const { ram, live } = ctx.savers;
  const limiter = new RateLimiter(clock.now, () => ctx.params().max_bandwidth, w.bytes);
  let maxSize = 0;
  /** The last window's bandwidth (bytes/ms), for max_size between windows. */
  let bandwidth = 0;
  // The bandwidth of the last window without a drain, and whether this window had one.
  let linkBandwidth = NaN;
  let drainedInWindow = false;
  let lastSyncs = ram.stats.dirtySyncCount;
  // Round trip to the destination (ms) and the stream position of the last drain.
  let rtt = 0;
  let drainedAt = -1;
  /** Switch over at the next chance, whatever is pending (a floor or a stall said so). */
  let settle = false;
  let unachievable = false;
  const floor = new StallDetector(() => FLOOR_SYNCS);
  // Stall detection and the completion deadline (engine/deadline.ts).
  const watch = new ConvergenceWatch(
    ctx.startedAt ?? clock.now(),
    ram.totalBytes,
    ctx.params,
  );
  /** What forced the switchover, if something did (its downtime is reported). */
  let forcedBy: Escalation["source"] | null = null;
  let converge = ctx.capabilities.auto_converge ? newAutoConverge(ctx) : null;
  const escalationHooks = {
    throttleUp: () => {
      converge ??= newAutoConverge(ctx);
      const throttle = converge.escalate();
      if (throttle !== null) {
        ctx.guest.setThrottle(throttle);
        ctx.progress.throttled(throttle);
      }
      return throttle;
    },
    warn: (code: string, message: string) => ctx.progress.warn(code, message),
    dirtyPagesRate: () => ram.stats.dirtyPagesRate,
  };
  let failedCacheSize = -1;
  /** What a switchover costs besides sending: the final dirty-log sync and the round trip. */
  const stopCost = () => rtt + ram.lastSyncMs;
  /**
   * Once the round trip and the final sync alone reach the limit (max_size is then
   * 0, so "converged on paper" may never come), warn once and start looking for the
   * floor: switch over when what is left stops reaching new lows.
   */
  const checkAchievable = () => {
    const limit = ctx.params().downtime_limit;
    if (stopCost() >= limit && !unachievable) {
      unachievable = true;
      ctx.progress.warn(
        "downtime-limit-unachievable",
        `${unachievableWhy(rtt, ram.lastSyncMs)} alone exceeds downtime_limit (${limit} ms): ` +
          `switching over at the smallest downtime reachable`,
      );
    }
  };
  ctx.progress.active();
  for (;;) {
    signal.throwIfAborted();
    if (!limiter.exceeded(w.bytes)) {
      // Every live section's pending bytes count in the switchover decision.
      const pendingBy = live.map((e) => e.saver.pending(maxSize));
      const pending = pendingBy.reduce((a, b) => a + b, 0);
      const synced = ram.stats.dirtySyncCount !== lastSyncs;
      if (synced) {
        lastSyncs = ram.stats.dirtySyncCount;
        ctx.progress.pass(lastSyncs, ram.dirtyPages);
        const throttle = converge?.onSync(clock.now(), ram.lastSyncAdded * PAGE_SIZE, w.bytes);
        if (throttle) {
          ctx.guest.setThrottle(throttle);
          ctx.progress.throttled(throttle);
        }
      }
      // Right after a drain, or a sync that found pages (none left: the drain comes
      // next), `pending` is what a switchover would have to send now.
      const fresh = drainedAt === w.bytes || (synced && pending > 0);
      if (unachievable && fresh && floor.observe(pending)) {
        // With auto-converge, the floor is the one at the highest throttle: step up first.
        const up = converge?.escalate() ?? null;
        if (up === null) settle = true;
        else {
          ctx.guest.setThrottle(up);
          ctx.progress.throttled(up);
          floor.restart();
        }
      }
      // With XBZRLE or compression the encoding time, not the wire, can exceed the limit.
      const busy = ram.pendingBusyMs > ctx.params().downtime_limit - stopCost();
      if (!settle && pending > 0 && (pending >= maxSize || busy)) {
        // One round: each live section with something pending writes a PART.
        for (let i = 0; i < live.length; i++) {
          if (pendingBy[i] === 0 && live[i].saver !== ram) continue;
          await w.sectionPart(Section.PART, live[i].id);
          await live[i].saver.iterate(w, () => limiter.exceeded(w.bytes) || signal.aborted);
          await w.footer(live[i].id);
        }
        await w.flush();
      } else if (ctx.drain && drainedAt !== w.bytes) {
        // Converged on paper: let the pipe empty while the guest still runs, then
        // look again (pending() syncs, so pages dirtied meanwhile count).
        const waitFrom = clock.now();
        rtt = await ctx.drain();
        drainedAt = w.bytes;
        drainedInWindow = true;
        limiter.exclude(clock.now() - waitFrom);
        // The round trip just measured comes out of the budget now, not at the next
        // window: a switchover right after this drain must not size by an older one.
        maxSize = bandwidth * Math.max(0, ctx.params().downtime_limit - stopCost());
        checkAchievable();
        continue;
      } else {
        const result = await complete(ctx);
        if (forcedBy) {
          ctx.progress.warn(
            "forced-switchover-downtime",
            `The switchover forced by the ${
              forcedBy === "stall" ? "stall" : "completion deadline"
            } cost ${
              Math.round(result.downtime)
            } ms of downtime (downtime_limit ${ctx.params().downtime_limit} ms)`,
          );
        }
        return result;
      }
    }
    const measured = limiter.tick(w.bytes);
    if (measured) {
      // A drain's time is left out of the window, but the bytes written before it
      // crossed the link during it, and the emptied socket buffers then take their
      // size at memory speed: such a window reads far above the link. It counts for
      // no more than the last window without a drain (docs/ARCHITECTURE.md,
      // "Convergence").
      const window = drainedInWindow && linkBandwidth < measured.bandwidth
        ? { ...measured, bandwidth: linkBandwidth }
        : measured;
      if (!drainedInWindow) linkBandwidth = measured.bandwidth;
      drainedInWindow = false;
      const params = ctx.params();
      // The final sync and the switchover handshake's round trip are part of the downtime.
      bandwidth = window.bandwidth;
      maxSize = bandwidth * Math.max(0, params.downtime_limit - stopCost());
      checkAchievable();
      // Compression is skipped for the next window if the link outruns the compressor.
      ram.windowEnded(window.bandwidth, limiter.budget() / WINDOW_MS);
      try {
        // A size that could not be had is not tried again at every window.
        if (params.xbzrle_cache_size !== failedCacheSize) ram.resizeCache(params.xbzrle_cache_size);
      } catch (e) {
        failedCacheSize = params.xbzrle_cache_size;
        ctx.progress.warn(
          "xbzrle-cache-resize-failed",
          `Cannot resize the XBZRLE cache to ${params.xbzrle_cache_size} bytes ` +
            `(${(e as Error).message}): keeping ${ram.cacheSize} bytes`,
        );
      }
      const pendingBytes = ram.pendingWireBytes +
        live.reduce((n, e) => n + (e.saver === ram ? 0 : e.saver.backlogBytes), 0);
      const expected = window.bandwidth > 0
        ? Math.max(pendingBytes / window.bandwidth, ram.pendingBusyMs) + stopCost()
        : Infinity;
      ctx.progress.window(window, expected, maxSize);
      if (!settle) {
        const backlog = live.reduce((n, e) => n + e.saver.backlogBytes, 0);
        const escalation = watch.window(clock.now(), backlog);
        if (escalation) {
          settle = takeEscalation(escalation, escalationHooks, watch);
          if (settle) forcedBy = escalation.source;
        }
      }
    }
    if (limiter.exceeded(w.bytes)) {
      await w.flush();
      await clock.sleep(limiter.remaining(), signal);
    }
  }
}

function newAutoConverge(ctx: OutgoingContext): AutoConverge {
  return new AutoConverge(ctx.clock.now(), ctx.writer.bytes, () => {
    const p = ctx.params();
    return { initial: p.cpu_throttle_initial, increment: p.cpu_throttle_increment };
  });
}

/** Stops the guest, sends what is left and the device state, ends the stream. */
async function complete(ctx: OutgoingContext): Promise<OutgoingResult> {
  const { writer: w, guest, clock } = ctx;
  const { ram } = ctx.savers;
  const before: RunState = guest.runState;
  const wasRunning = before === "running";
  const stoppedAt = clock.now();
  guest.stop("finish-migrate");
  const marks = { stopped: clock.now(), sent: 0, devices: 0, paused: 0 };
  ctx.progress.stopped(stoppedAt);
  try {
    if (ctx.beforeSwitchover) {
      await ctx.beforeSwitchover();
      marks.paused = clock.now() - marks.stopped;
    }
    for (const { id, saver } of byId(ctx.savers.live)) {
      await w.sectionPart(Section.END, id);
      await saver.complete(w);
      await w.footer(id);
    }
    marks.sent = clock.now();
    ctx.progress.pass(ram.stats.dirtySyncCount, 0);
    for (const { id, name, version, saver } of byId(ctx.savers.devices)) {
      // A saver of several sections (QEMU's devices, replayed) names each one itself.
      const sections = saver.sections?.() ??
        [{ id, name, instance: 0, version, payload: await saver.state() }];
      for (const s of sections) {
        const digest = sharedKernels().digest(s.payload, 0, s.payload.length);
        ctx.digests?.addDevice(s.name, s.instance, s.payload.length, digest);
        await w.sectionStart(Section.FULL, s.id, s.name, s.instance, s.version);
        await w.write(s.payload);
        await w.footer(s.id);
      }
    }
    marks.devices = clock.now();
    await w.end(vmDescription(ctx.savers, ctx.digests ?? undefined));
    await w.drain();
    await w.channel.finish();
  } catch (e) {
    // Put the guest back as it was; the caller reports the failure.
    if (wasRunning) guest.start();
    else guest.setRunState(before);
    throw e;
  }
  const end = clock.now();
  const downtime = end - stoppedAt;
  const limit = ctx.params().downtime_limit;
  if (downtime > limit) {
    // Where the time went, so an operator can tell a slow link from a slow guest.
    const ms = (x: number) => `${Math.round(x)} ms`;
    const sync = Math.min(ram.lastSyncMs, marks.sent - marks.stopped - marks.paused);
    const paused = marks.paused > 0 ? `, the pause before switchover ${ms(marks.paused)}` : "";
    ctx.progress.warn(
      "downtime-limit-exceeded",
      `The downtime (${ms(downtime)}) exceeded downtime_limit (${limit} ms): stopping the ` +
        `guest took ${ms(marks.stopped - stoppedAt)}${paused}, the final dirty-log sync ` +
        `${ms(sync)}, the last pages ${ms(marks.sent - marks.stopped - marks.paused - sync)}, ` +
        `device state ` +
        `${ms(marks.devices - marks.sent)}, the end of the stream and the destination's ` +
        `answer ${ms(end - marks.devices)}`,
    );
  }
  guest.setRunState("postmigrate");
  return { downtime, wasRunning };
}

/**
 * The vmdescription JSON: page size and every device section's description
 * (QEMU's format), plus, with `verify`, ferry's integrity record under
 * `ferry.integrity` (QEMU's analyzer ignores keys it does not know).
 */
export function vmDescription(
  savers: Pick<Savers, "devices">,
  digests?: MigrationDigests,
): Record<string, unknown> {
  return {
    page_size: PAGE_SIZE,
    devices: byId(savers.devices).flatMap((d) => d.saver.describe()),
    ...(digests ? { ferry: { integrity: digests.record() } } : {}),
  };
}
