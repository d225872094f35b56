/**
 * The vCPU: a module worker that runs the guest's workload over shared RAM in short
 * slices. Between slices it obeys the control block (stop/run/exit, throttle) and
 * paces rate-limited workloads, sleeping with Atomics.wait on the command word so a
 * command wakes it at once. Every guest write stores the page's bytes first and only
 * then sets the page's dirty bit, so a migration that clears the bit and then reads
 * the page never misses a write.
 *
 * Started by {@link ../vcpu.ts}; the only message it receives is {@link VcpuInitMessage}.
 */
import { DISK_CHUNK } from "./disk.ts";
import { PAGE_SIZE, RamBlock } from "./ram.ts";
import {
  ACK_FAILED,
  CTL,
  OP,
  OP_MASK,
  OPS_INDEX64,
  readRate,
  type VcpuInitMessage,
  type VcpuWorkerMessage,
} from "./vcpu_control.ts";
import { WORKLOAD_KIND_CODES } from "./workload.ts";

/** Upper bound on `ab` ops per slice (~10-40 µs of page-strided byte increments). */
const AB_SLICE_OPS = 512;
/** Bytes of random data written per slice at most (bounds a slice to tens of µs). */
const RANDOM_SLICE_BYTES = 8192;
/** Upper bound on `random` ops per slice. */
const RANDOM_SLICE_OPS = 256;
/** A rate-limited workload catches up at most this much lost time in a burst. */
const MAX_BACKLOG_MS = 20;
/** Longest single sleep before the pacing is recomputed (a command still wakes it at once). */
const MAX_SLEEP_MS = 100;
/**
 * Shortest sleep (ms): throttle sleep is taken once this much is owed, and a paced
 * workload sleeps at least this long and then catches up in a burst, so the worker
 * wakes ~1000 times a second rather than once per op.
 */
const MIN_SLEEP_MS = 1;
/**
 * A throttled vCPU runs for this long, then sleeps `timeslice × t/(100 − t)` (QEMU's
 * CPU_THROTTLE_TIMESLICE): at 99 % it runs 10 ms and sleeps 990 ms. Long sleeps
 * matter: a guest that rewrites its whole working set within one run slice still
 * leaves syncs that find almost nothing dirty, which is what lets auto-converge finish
 * a migration of such a guest (finely interleaved sleeps would dirty every page in
 * every pass).
 */
const THROTTLE_TIMESLICE_MS = 10;
/** Bytes of one guest disk write. */
const DISK_WRITE = 4096;
/** Upper bound on disk writes per slice. */
const DISK_SLICE_OPS = 64;

/** The worker's handle on the guest disk: its own file descriptor and the shared bitmaps. */
interface WorkerDisk {
  readonly file: Deno.FsFile;
  /** 4 KiB slots in the image. */
  readonly slots: number;
  readonly dirty: Uint32Array;
  readonly written: Uint32Array;
}

/** 2^-32, to scale a 32-bit random number into [0, 1). */
const INV_2_32 = 1 / 4294967296;

/** The guest program the worker runs: the workload's parameters and its live state. */
class Program {
  kind = 0;
  /** Ops per millisecond for rate-limited workloads; 0 = unlimited. */
  opsPerMs = 0;
  sliceOps = 1;
  rangePages = 0;
  pages: number;
  hotPages = 0;
  /** A random u32 below this sends the op into the hot set. */
  hotThreshold = 0;
  bytesPerOp = 0;
  cursor = 0;
  ops = 0;
  s0 = 1;
  s1 = 0;
  s2 = 0;
  s3 = 0;
  /** Disk writes (4 KiB each) per millisecond; 0 = none. */
  diskOpsPerMs = 0;
  /** When the next disk write is due (performance.now()). */
  diskDue = 0;
  /** xorshift32 state of the disk writes (separate from the migrated PRNG). */
  diskSeed = 0x9e3779b9;
  readonly diskBuf = new Uint8Array(DISK_WRITE);

  constructor(
    readonly block: RamBlock,
    readonly ctl: Int32Array,
    readonly big: BigInt64Array,
    readonly disk: WorkerDisk | null,
  ) {
    this.pages = block.pages;
  }

  /** Loads the workload and its state from the control block (on every resume). */
  load(): void {
    const ctl = this.ctl;
    this.kind = Atomics.load(ctl, CTL.KIND);
    const rate = readRate(ctl);
    this.opsPerMs = rate / PAGE_SIZE / 1000;
    const rangePages = Atomics.load(ctl, CTL.RANGE_PAGES) >>> 0;
    this.rangePages = rangePages === 0 || rangePages > this.pages ? this.pages : rangePages;
    const hotPercent = Atomics.load(ctl, CTL.HOT_PAGES);
    this.hotPages = Math.max(1, Math.floor(this.pages * hotPercent / 100));
    this.hotThreshold = hotPercent === 0 ? 0 : Atomics.load(ctl, CTL.HOT_OPS) / 100 * 4294967296;
    this.bytesPerOp = Math.min(PAGE_SIZE, Math.max(1, Atomics.load(ctl, CTL.BYTES)));
    this.sliceOps = this.kind === WORKLOAD_KIND_CODES.random
      ? Math.max(1, Math.min(RANDOM_SLICE_OPS, Math.floor(RANDOM_SLICE_BYTES / this.bytesPerOp)))
      : AB_SLICE_OPS;
    this.cursor = (Atomics.load(ctl, CTL.AB_CURSOR) >>> 0) % this.rangePages;
    this.ops = Number(Atomics.load(this.big, OPS_INDEX64));
    this.s0 = Atomics.load(ctl, CTL.PRNG) | 0;
    this.s1 = Atomics.load(ctl, CTL.PRNG + 1) | 0;
    this.s2 = Atomics.load(ctl, CTL.PRNG + 2) | 0;
    this.s3 = Atomics.load(ctl, CTL.PRNG + 3) | 0;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
    const diskRate = this.kind === WORKLOAD_KIND_CODES.random && this.disk
      ? (Atomics.load(ctl, CTL.DISK_RATE_HI) >>> 0) * 2 ** 32 +
        (Atomics.load(ctl, CTL.DISK_RATE_LO) >>> 0)
      : 0;
    this.diskOpsPerMs = diskRate / DISK_WRITE / 1000;
  }

  /**
   * Writes the disk writes owed by `now` (at most {@link DISK_SLICE_OPS}): 4 KiB of
   * random bytes at a random 4 KiB-aligned offset, then the chunk's dirty and
   * written bits. Returns when the next one is due.
   */
  runDisk(now: number): number {
    const disk = this.disk!;
    if (this.diskDue < now - MAX_BACKLOG_MS) this.diskDue = now - MAX_BACKLOG_MS;
    const period = 1 / this.diskOpsPerMs;
    let ops = 0;
    while (this.diskDue <= now && ops < DISK_SLICE_OPS) {
      let x = this.diskSeed;
      const words = new Int32Array(this.diskBuf.buffer);
      for (let i = 0; i < words.length; i++) {
        x ^= x << 13, x ^= x >>> 17, x ^= x << 5;
        words[i] = x;
      }
      x ^= x << 13, x ^= x >>> 17, x ^= x << 5;
      this.diskSeed = x;
      const slot = Math.floor((x >>> 0) * disk.slots * INV_2_32);
      const at = slot * DISK_WRITE;
      disk.file.seekSync(at, Deno.SeekMode.Start);
      let off = 0;
      while (off < DISK_WRITE) off += disk.file.writeSync(this.diskBuf.subarray(off));
      const chunk = Math.floor(at / DISK_CHUNK);
      Atomics.or(disk.written, chunk >>> 5, 1 << (chunk & 31));
      Atomics.or(disk.dirty, chunk >>> 5, 1 << (chunk & 31));
      this.diskDue += period;
      ops++;
    }
    return this.diskDue;
  }

  /** Publishes the live state (cursor, op counter, PRNG) into the control block. */
  publish(): void {
    const ctl = this.ctl;
    Atomics.store(ctl, CTL.AB_CURSOR, this.cursor);
    Atomics.store(this.big, OPS_INDEX64, BigInt(this.ops));
    Atomics.store(ctl, CTL.PRNG, this.s0);
    Atomics.store(ctl, CTL.PRNG + 1, this.s1);
    Atomics.store(ctl, CTL.PRNG + 2, this.s2);
    Atomics.store(ctl, CTL.PRNG + 3, this.s3);
  }

  /** Runs `count` ops of the workload. */
  run(count: number): void {
    if (this.kind === WORKLOAD_KIND_CODES.ab) this.runAb(count);
    else if (this.kind === WORKLOAD_KIND_CODES.random) this.runRandom(count);
  }

  /** `ab`: increment byte 0 of the cursor's page, then mark it dirty; advance the cursor. */
  runAb(count: number): void {
    const bytes = this.block.bytes;
    const dirty = this.block.dirty;
    const range = this.rangePages;
    let cursor = this.cursor;
    for (let i = 0; i < count; i++) {
      bytes[cursor * PAGE_SIZE]++;
      Atomics.or(dirty, cursor >>> 5, 1 << (cursor & 31));
      if (++cursor === range) cursor = 0;
    }
    this.cursor = cursor;
    this.ops += count;
  }

  /** `random`: write N random bytes at a random offset of a (possibly hot) page, then mark it dirty. */
  runRandom(count: number): void {
    const bytes = this.block.bytes;
    const dirty = this.block.dirty;
    const pages = this.pages;
    const hotPages = this.hotPages;
    const hotThreshold = this.hotThreshold;
    const n = this.bytesPerOp;
    const offsets = PAGE_SIZE - n + 1;
    let x = this.s0, y = this.s1, z = this.s2, w = this.s3;
    for (let i = 0; i < count; i++) {
      let t = x ^ (x << 11);
      x = y, y = z, z = w, w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
      let span = pages;
      if (hotThreshold !== 0 && (w >>> 0) < hotThreshold) span = hotPages;
      t = x ^ (x << 11);
      x = y, y = z, z = w, w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
      const page = Math.floor((w >>> 0) * span * INV_2_32);
      t = x ^ (x << 11);
      x = y, y = z, z = w, w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
      let at = page * PAGE_SIZE + Math.floor((w >>> 0) * offsets * INV_2_32);
      for (let k = 0; k < n; k += 4) {
        t = x ^ (x << 11);
        x = y, y = z, z = w, w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
        bytes[at++] = w;
        if (k + 1 < n) bytes[at++] = w >>> 8;
        if (k + 2 < n) bytes[at++] = w >>> 16;
        if (k + 3 < n) bytes[at++] = w >>> 24;
      }
      Atomics.or(dirty, page >>> 5, 1 << (page & 31));
    }
    this.s0 = x, this.s1 = y, this.s2 = z, this.s3 = w;
    this.ops += count;
  }
}

/** Stores `cmd` as acknowledged and wakes a main thread waiting for it. */
function acknowledge(ctl: Int32Array, cmd: number): void {
  Atomics.store(ctl, CTL.ACK, cmd);
  Atomics.notify(ctl, CTL.ACK);
}

/** Sleeps up to `ms`, returning early as soon as the command word stops being `cmd`. */
function sleep(ctl: Int32Array, cmd: number, ms: number): void {
  if (ms > 0) Atomics.wait(ctl, CTL.CMD, cmd, ms);
}

/** The worker's main loop: obeys commands at every slice boundary until told to exit. */
function loop(program: Program): void {
  const ctl = program.ctl;
  let loaded = false;
  let due = 0;
  let debt = 0;
  for (;;) {
    const cmd = Atomics.load(ctl, CTL.CMD);
    const op = cmd & OP_MASK;
    if (op !== OP.RUN) {
      if (loaded) {
        program.publish();
        loaded = false;
      }
      if (Atomics.load(ctl, CTL.ACK) !== cmd) acknowledge(ctl, cmd);
      if (op === OP.EXIT) return;
      Atomics.wait(ctl, CTL.CMD, cmd);
      continue;
    }
    if (!loaded) {
      program.load();
      loaded = true;
      // Pacing survives a stop/start cycle (no free op per resume), but never lags
      // the clock or runs more than one op period ahead of it.
      const now = performance.now();
      const period = program.opsPerMs > 0 ? 1 / program.opsPerMs : 0;
      due = Math.min(Math.max(due, now), now + period);
      debt = 0;
    }
    if (Atomics.load(ctl, CTL.ACK) !== cmd) acknowledge(ctl, cmd);
    if (program.kind === WORKLOAD_KIND_CODES.idle) {
      Atomics.wait(ctl, CTL.CMD, cmd);
      continue;
    }
    const start = performance.now();
    let wake = Infinity;
    if (program.diskOpsPerMs > 0) wake = program.runDisk(start);
    let count = program.sliceOps;
    if (program.opsPerMs > 0) {
      // A throttled vCPU gets (100 - throttle) % of its time, so a paced guest
      // program gets that share of its work done (the catch-up below must not
      // undo the throttle).
      const share = (100 - Atomics.load(ctl, CTL.THROTTLE)) / 100;
      const opsPerMs = program.opsPerMs * share;
      if (due < start - MAX_BACKLOG_MS) due = start - MAX_BACKLOG_MS;
      if (start < due) {
        const until = Math.min(due, wake);
        sleep(ctl, cmd, Math.min(Math.max(until - start, MIN_SLEEP_MS), MAX_SLEEP_MS));
        continue;
      }
      count = Math.min(count, Math.floor((start - due) * opsPerMs) + 1);
      due += count / opsPerMs;
    }
    program.run(count);
    program.publish();
    const throttle = Atomics.load(ctl, CTL.THROTTLE);
    if (throttle <= 0) {
      debt = 0;
      continue;
    }
    const end = performance.now();
    debt += (end - start) * throttle / (100 - throttle);
    if (debt >= Math.max(MIN_SLEEP_MS, THROTTLE_TIMESLICE_MS * throttle / (100 - throttle))) {
      sleep(ctl, cmd, debt);
      debt = Math.max(-MAX_BACKLOG_MS, debt - (performance.now() - end));
    }
  }
}

/** The slice of the worker global scope this module uses (typed without the worker lib). */
interface WorkerScope {
  onmessage: ((event: MessageEvent<VcpuInitMessage>) => void) | null;
  postMessage(message: VcpuWorkerMessage): void;
  close(): void;
}

const scope = globalThis as unknown as WorkerScope;

scope.onmessage = (event: MessageEvent<VcpuInitMessage>): void => {
  scope.onmessage = null;
  const init = event.data;
  const ctl = new Int32Array(init.control);
  try {
    const blocks = init.blocks.map((b) => new RamBlock(b.name, b.length, b.shared));
    const disk: WorkerDisk | null = init.disk
      ? {
        file: Deno.openSync(init.disk.path, { write: true }),
        slots: init.disk.size / DISK_WRITE,
        dirty: new Uint32Array(init.disk.dirty),
        written: new Uint32Array(init.disk.written),
      }
      : null;
    const program = new Program(blocks[0], ctl, new BigInt64Array(init.control), disk);
    scope.postMessage({ type: "ready" });
    loop(program);
  } catch (error) {
    Atomics.store(ctl, CTL.ACK, ACK_FAILED);
    Atomics.notify(ctl, CTL.ACK);
    scope.postMessage({
      type: "error",
      message: error instanceof Error ? error.message : String(error),
    });
  }
  scope.close();
};
