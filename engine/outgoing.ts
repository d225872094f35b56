import type { Guest, RunState } from "../vm/guest.ts";
import type { Clock } from "./clock.ts";
import {
  MACHINE_TYPE,
  RAM_SECTION_VERSION,
  Section,
  SectionName,
  VCPU_SECTION_VERSION,
} from "./format/constants.ts";
import type { StreamWriter } from "./format/writer.ts";
import { PAGE_SIZE } from "../vm/ram.ts";
import type { Capabilities, Parameters } from "./params.ts";
import { AutoConverge, MAX_THROTTLE } from "./auto_converge.ts";
import { StallDetector, StallError } from "./stall.ts";
import { RateLimiter, type WindowStats } from "./rate_limiter.ts";
import { RamSaver } from "./sections/ram.ts";
import { describeVcpu, saveVcpu } from "./sections/vcpu.ts";
import { BLOCK_SECTION_NAME, BLOCK_SECTION_VERSION, type BlockSaver } from "./sections/block.ts";
import type { MigrationDigests } from "./integrity.ts";

/** Section ids ferry assigns, in registration order (QEMU numbers them the same way). */
export const SectionId = { RAM: 0, VCPU: 1, BLOCK: 2 } as const;

/** Most block bytes one loop turn sends before RAM gets its turn (both share the budget). */
const BLOCK_TURN_BYTES = 8 << 20;

/** What the migration loop reports while it runs. */
export interface OutgoingProgress {
  /** Window measurements: bandwidth in bytes/ms, expected downtime in ms. */
  window(stats: WindowStats, expectedDowntime: number): void;
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
  readonly ram: RamSaver;
  /** The `block` live section, with blk/inc. */
  readonly block?: BlockSaver | null;
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
  await w.configuration(MACHINE_TYPE);
  await w.sectionStart(Section.START, SectionId.RAM, SectionName.RAM, 0, RAM_SECTION_VERSION);
  ctx.ram.sync(); // clear the guest's log: the migration bitmap already has every page
  await ctx.ram.setup(w);
  await w.footer(SectionId.RAM);
  if (ctx.block) {
    await w.sectionStart(
      Section.START,
      SectionId.BLOCK,
      BLOCK_SECTION_NAME,
      0,
      BLOCK_SECTION_VERSION,
    );
    await ctx.block.setup(w);
    await w.footer(SectionId.BLOCK);
  }
  await w.flush();
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
 * - the round trip alone exceeds the limit (max_size is 0): the loop warns once
 *   and switches over when what a sync finds stops reaching new lows, at the
 *   smallest downtime it can reach;
 * - what is left stops shrinking (the guest dirties as fast as the link sends):
 *   after `stall_windows` windows without a new low, `stall_action` fails the
 *   migration, switches over now, or steps the throttle up.
 */
export async function runPrecopy(ctx: OutgoingContext): Promise<OutgoingResult> {
  const { writer: w, ram, clock, signal } = ctx;
  const limiter = new RateLimiter(clock.now, () => ctx.params().max_bandwidth, w.bytes);
  let maxSize = 0;
  let lastSyncs = ram.stats.dirtySyncCount;
  // Round trip to the destination (ms) and the stream position of the last drain.
  let rtt = 0;
  let drainedAt = -1;
  /** Switch over at the next chance, whatever is pending (a floor or a stall said so). */
  let settle = false;
  let unachievable = false;
  const floor = new StallDetector(() => FLOOR_SYNCS);
  const stall = new StallDetector(() => ctx.params().stall_windows);
  let converge = ctx.capabilities.auto_converge ? newAutoConverge(ctx) : null;
  let failedCacheSize = -1;
  ctx.progress.active();
  for (;;) {
    signal.throwIfAborted();
    if (!limiter.exceeded(w.bytes)) {
      // Disk bytes pending count with RAM's in the switchover decision.
      const pending = ram.pending(maxSize) + (ctx.block?.pending() ?? 0);
      if (ram.stats.dirtySyncCount !== lastSyncs) {
        lastSyncs = ram.stats.dirtySyncCount;
        ctx.progress.pass(lastSyncs, ram.dirtyPages);
        const throttle = converge?.onSync(clock.now(), ram.lastSyncAdded * PAGE_SIZE, w.bytes);
        if (throttle) {
          ctx.guest.setThrottle(throttle);
          ctx.progress.throttled(throttle);
        }
      }
      // Right after a drain, `pending` is what a switchover would have to send now.
      if (unachievable && drainedAt === w.bytes && floor.observe(pending)) settle = true;
      // With XBZRLE the encoding time, not the wire, can be what exceeds the limit.
      const busy = ram.pendingBusyMs > ctx.params().downtime_limit - rtt;
      if (!settle && pending > 0 && (pending >= maxSize || busy)) {
        if (ctx.block && ctx.block.remainingBytes > 0) {
          const turnEnd = w.bytes + BLOCK_TURN_BYTES;
          await w.sectionPart(Section.PART, SectionId.BLOCK);
          await ctx.block.iterate(
            w,
            () => w.bytes >= turnEnd || limiter.exceeded(w.bytes) || signal.aborted,
          );
          await w.footer(SectionId.BLOCK);
        }
        await w.sectionPart(Section.PART, SectionId.RAM);
        await ram.iterate(w, () => limiter.exceeded(w.bytes) || signal.aborted);
        await w.footer(SectionId.RAM);
        await w.flush();
      } else if (ctx.drain && drainedAt !== w.bytes) {
        // Converged on paper: let the pipe empty while the guest still runs, then
        // look again (pending() syncs, so pages dirtied meanwhile count).
        const waitFrom = clock.now();
        rtt = await ctx.drain();
        drainedAt = w.bytes;
        limiter.exclude(clock.now() - waitFrom);
        const limit = ctx.params().downtime_limit;
        if (rtt >= limit && !unachievable) {
          unachievable = true;
          ctx.progress.warn(
            "downtime-limit-unachievable",
            `The round trip to the destination (${Math.round(rtt)} ms) alone exceeds ` +
              `downtime_limit (${limit} ms): switching over at the smallest downtime reachable`,
          );
        }
        continue;
      } else {
        return await complete(ctx);
      }
    }
    const window = limiter.tick(w.bytes);
    if (window) {
      const params = ctx.params();
      // The switchover handshake's round trip is part of the downtime.
      maxSize = window.bandwidth * Math.max(0, params.downtime_limit - rtt);
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
      const pendingBytes = ram.pendingWireBytes + (ctx.block?.remainingBytes ?? 0);
      const expected = window.bandwidth > 0
        ? Math.max(pendingBytes / window.bandwidth, ram.pendingBusyMs) + rtt
        : Infinity;
      ctx.progress.window(window, expected);
      if (!settle && stall.observe(ram.backlogBytes + (ctx.block?.remainingBytes ?? 0))) {
        const why = ` (the guest dirtied ${ram.stats.dirtyPagesRate} pages/s)`;
        if (params.stall_action === "switchover") {
          settle = true;
          ctx.progress.warn(
            "stalled-switchover",
            `Migration stalled for ${stall.since} windows: switching over now (stall_action ` +
              `switchover); the downtime will exceed the limit`,
          );
        } else if (params.stall_action === "throttle") {
          converge ??= newAutoConverge(ctx);
          const throttle = converge.escalate();
          if (throttle === null) {
            throw new StallError(
              stall.low,
              stall.since,
              `${why}, even throttled to ${MAX_THROTTLE} %`,
            );
          }
          ctx.guest.setThrottle(throttle);
          ctx.progress.throttled(throttle);
          ctx.progress.warn(
            "stalled-throttle",
            `Migration stalled for ${stall.since} windows: throttling the guest to ${throttle} % ` +
              `(stall_action throttle)`,
          );
          stall.restart();
        } else {
          throw new StallError(stall.low, stall.since, why);
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
  const { writer: w, ram, guest, clock } = ctx;
  const before: RunState = guest.runState;
  const wasRunning = before === "running";
  const stoppedAt = clock.now();
  guest.stop("finish-migrate");
  ctx.progress.stopped(stoppedAt);
  try {
    await w.sectionPart(Section.END, SectionId.RAM);
    await ram.complete(w);
    await w.footer(SectionId.RAM);
    if (ctx.block) {
      await w.sectionPart(Section.END, SectionId.BLOCK);
      await ctx.block.complete(w);
      await w.footer(SectionId.BLOCK);
    }
    ctx.progress.pass(ram.stats.dirtySyncCount, 0);
    await w.sectionStart(Section.FULL, SectionId.VCPU, SectionName.VCPU, 0, VCPU_SECTION_VERSION);
    await saveVcpu(w, guest, ctx.digests ?? undefined);
    await w.footer(SectionId.VCPU);
    await w.end(vmDescription(guest, ctx.digests ?? undefined));
    await w.drain();
    await w.channel.finish();
  } catch (e) {
    // Put the guest back as it was; the caller reports the failure.
    if (wasRunning) guest.start();
    else guest.setRunState(before);
    throw e;
  }
  const downtime = clock.now() - stoppedAt;
  guest.setRunState("postmigrate");
  return { downtime, wasRunning };
}

/**
 * The vmdescription JSON: page size and every device section's fields (QEMU's
 * format), plus, with `verify`, ferry's integrity record under `ferry.integrity`
 * (QEMU's analyzer ignores keys it does not know).
 */
export function vmDescription(
  guest: Guest,
  digests?: MigrationDigests,
): Record<string, unknown> {
  return {
    page_size: PAGE_SIZE,
    devices: [describeVcpu(guest, VCPU_SECTION_VERSION)],
    ...(digests ? { ferry: { integrity: digests.record() } } : {}),
  };
}
