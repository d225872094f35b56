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
import { AutoConverge } from "./auto_converge.ts";
import { RateLimiter, type WindowStats } from "./rate_limiter.ts";
import { RamSaver } from "./sections/ram.ts";
import { describeVcpu, saveVcpu } from "./sections/vcpu.ts";
import { BLOCK_SECTION_NAME, BLOCK_SECTION_VERSION, type BlockSaver } from "./sections/block.ts";

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
}

/** Everything the loop needs; it never sees sockets, only the writer. */
export interface OutgoingContext {
  readonly guest: Guest;
  readonly writer: StreamWriter;
  readonly ram: RamSaver;
  /** The `block` live section, with blk/inc. */
  readonly block?: BlockSaver | null;
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
 * The pre-copy loop (QEMU 1.6's migration_thread): 100 ms windows with a byte
 * budget of max_bandwidth/10; after each window the bandwidth estimate sets
 * max_size = bandwidth × downtime_limit; sections iterate while pending ≥ max_size,
 * then the guest stops and the rest goes out unthrottled.
 */
export async function runPrecopy(ctx: OutgoingContext): Promise<OutgoingResult> {
  const { writer: w, ram, clock, signal } = ctx;
  const limiter = new RateLimiter(clock.now, () => ctx.params().max_bandwidth, w.bytes);
  let maxSize = 0;
  let lastSyncs = ram.stats.dirtySyncCount;
  // Round trip to the destination (ms) and the stream position of the last drain.
  let rtt = 0;
  let drainedAt = -1;
  const converge = ctx.capabilities.auto_converge
    ? new AutoConverge(clock.now(), w.bytes, () => {
      const p = ctx.params();
      return { initial: p.cpu_throttle_initial, increment: p.cpu_throttle_increment };
    })
    : null;
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
      // With XBZRLE the encoding time, not the wire, can be what exceeds the limit.
      const busy = ram.pendingBusyMs > ctx.params().downtime_limit - rtt;
      if (pending > 0 && (pending >= maxSize || busy)) {
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
      ram.resizeCache(params.xbzrle_cache_size);
      const pendingBytes = ram.pendingWireBytes + (ctx.block?.remainingBytes ?? 0);
      const expected = window.bandwidth > 0
        ? Math.max(pendingBytes / window.bandwidth, ram.pendingBusyMs) + rtt
        : Infinity;
      ctx.progress.window(window, expected);
    }
    if (limiter.exceeded(w.bytes)) {
      await w.flush();
      await clock.sleep(limiter.remaining(), signal);
    }
  }
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
    await saveVcpu(w, guest);
    await w.footer(SectionId.VCPU);
    await w.end(vmDescription(guest));
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

/** The vmdescription JSON: page size and every device section's fields (QEMU's format). */
export function vmDescription(guest: Guest): Record<string, unknown> {
  return {
    page_size: PAGE_SIZE,
    devices: [describeVcpu(guest, VCPU_SECTION_VERSION)],
  };
}
