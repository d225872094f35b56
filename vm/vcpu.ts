/**
 * The main thread's handle on the vCPU worker: start, a synchronous stop that returns
 * once the worker has acknowledged, throttle, and access to the guest program's state
 * (workload, ab cursor, op counter, PRNG) through the shared control block.
 */
import type { DiskShared } from "./disk.ts";
import type { RamBlock } from "./ram.ts";
import { isValidPrngState, type PrngState, xorshiftSeed } from "./prng.ts";
import {
  ACK_FAILED,
  commandWord,
  CTL,
  CTL_WORDS,
  OP,
  OPS_INDEX64,
  type VcpuInitMessage,
  type VcpuWorkerMessage,
  writeWorkload,
} from "./vcpu_control.ts";
import { assertWorkloadFits, type WorkloadSpec } from "./workload.ts";

/** Thrown when the vCPU worker fails, is used after terminate(), or is misused. */
export class VcpuError extends Error {
  override readonly name = "VcpuError";
}

/**
 * Everything that defines where the guest program is: with the same RAM, a vCPU
 * given this state continues exactly where another one stopped.
 */
export interface VcpuState {
  /** The program. */
  readonly workload: WorkloadSpec;
  /** `ab`: the page the next op increments (0 for other workloads). */
  readonly abCursor: number;
  /** Ops executed since the guest was created (carried across migrations). */
  readonly ops: number;
  /** xorshift128 state driving `random`. */
  readonly prng: PrngState;
}

/** Options of {@link Vcpu.create}. */
export interface VcpuOptions {
  /** RAM blocks; the workload runs on the first. */
  readonly blocks: readonly RamBlock[];
  /** The program to run. */
  readonly workload: WorkloadSpec;
  /** Seeds the PRNG (default 1). */
  readonly seed?: number;
  /** The guest's disk, for workloads that write it. */
  readonly disk?: DiskShared;
}

/** How long stop() waits for an acknowledgement before declaring the worker hung. */
const STOP_TIMEOUT_MS = 5000;

/**
 * Controller of one vCPU worker. The vCPU starts stopped; `start()` lets it run,
 * `stop()` blocks the main thread (Atomics.wait) until the worker has finished its
 * current slice and acknowledged, which takes tens of microseconds.
 */
export class Vcpu {
  readonly #worker: Worker;
  readonly #ctl: Int32Array;
  readonly #big: BigInt64Array;
  readonly #blockLength: number;
  #workload: WorkloadSpec;
  #sequence = 0;
  #running = false;
  #terminated = false;
  #failure: string | null = null;

  private constructor(
    worker: Worker,
    control: SharedArrayBuffer,
    workload: WorkloadSpec,
    blockLength: number,
  ) {
    this.#worker = worker;
    this.#ctl = new Int32Array(control);
    this.#big = new BigInt64Array(control);
    this.#workload = workload;
    this.#blockLength = blockLength;
    worker.onmessage = (event: MessageEvent<VcpuWorkerMessage>) => {
      if (event.data.type === "error") this.#failure = event.data.message;
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.#failure = event.message;
    };
  }

  /** Starts a vCPU worker over `blocks` (stopped) and resolves once it is ready. */
  static async create(options: VcpuOptions): Promise<Vcpu> {
    const first = options.blocks[0];
    if (!first) throw new VcpuError("Cannot create a vCPU without RAM blocks");
    assertWorkloadFits(options.workload, first.length);
    const control = new SharedArrayBuffer(CTL_WORDS * 4);
    const ctl = new Int32Array(control);
    ctl[CTL.ACK] = -1;
    writeWorkload(ctl, options.workload);
    ctl.set(xorshiftSeed(options.seed ?? 1), CTL.PRNG);
    const worker = new Worker(new URL("./vcpu_worker.ts", import.meta.url), { type: "module" });
    try {
      await new Promise<void>((resolve, reject) => {
        worker.onmessage = (event: MessageEvent<VcpuWorkerMessage>) => {
          if (event.data.type === "ready") resolve();
          else reject(new VcpuError(`vCPU worker failed to start: ${event.data.message}`));
        };
        worker.onerror = (event: ErrorEvent) => {
          event.preventDefault();
          reject(new VcpuError(`vCPU worker failed to start: ${event.message}`));
        };
        const init: VcpuInitMessage = {
          type: "init",
          control,
          blocks: options.blocks.map((b) => ({ name: b.name, length: b.length, shared: b.shared })),
          ...(options.disk ? { disk: options.disk } : {}),
        };
        worker.postMessage(init);
      });
    } catch (error) {
      worker.terminate();
      throw error;
    }
    return new Vcpu(worker, control, options.workload, first.length);
  }

  /** True between start() and stop(). */
  get running(): boolean {
    return this.#running;
  }

  /** True once terminate() was called. */
  get terminated(): boolean {
    return this.#terminated;
  }

  /** The program currently loaded. */
  get workload(): WorkloadSpec {
    return this.#workload;
  }

  /** Throttle percentage (0-99). */
  get throttle(): number {
    return Atomics.load(this.#ctl, CTL.THROTTLE);
  }

  /** Ops executed so far (published by the worker at every slice boundary). */
  get opsCount(): number {
    return Number(Atomics.load(this.#big, OPS_INDEX64));
  }

  /** Lets the worker run the workload. Starting a running vCPU does nothing. */
  start(): void {
    this.#assertAlive("start");
    if (this.#running) return;
    this.#command(OP.RUN);
    this.#running = true;
  }

  /**
   * Stops the worker and returns once it has acknowledged: no guest write happens
   * after this returns. Stopping a stopped vCPU does nothing.
   */
  stop(): void {
    this.#assertAlive("stop");
    if (!this.#running) return;
    const want = this.#command(OP.STOP);
    this.#running = false;
    this.#awaitAck(want, "stop");
  }

  /** Sets the share (integer 0-99 %) of each slice the worker sleeps; applies at the next slice. */
  setThrottle(percent: number): void {
    if (!Number.isInteger(percent) || percent < 0 || percent > 99) {
      throw new VcpuError(`Invalid throttle ${percent}: expected an integer percentage 0-99`);
    }
    Atomics.store(this.#ctl, CTL.THROTTLE, percent);
  }

  /** The program's state; consistent when stopped (a best-effort snapshot while running). */
  readState(): VcpuState {
    const ctl = this.#ctl;
    return {
      workload: this.#workload,
      abCursor: this.#workload.kind === "ab" ? Atomics.load(ctl, CTL.AB_CURSOR) >>> 0 : 0,
      ops: this.opsCount,
      prng: [
        Atomics.load(ctl, CTL.PRNG) >>> 0,
        Atomics.load(ctl, CTL.PRNG + 1) >>> 0,
        Atomics.load(ctl, CTL.PRNG + 2) >>> 0,
        Atomics.load(ctl, CTL.PRNG + 3) >>> 0,
      ],
    };
  }

  /** Replaces the program's state (e.g. from a migration stream); only while stopped. */
  writeState(state: VcpuState): void {
    this.#assertAlive("load state into");
    if (this.#running) throw new VcpuError("Cannot load vCPU state while the vCPU is running");
    assertWorkloadFits(state.workload, this.#blockLength);
    const rangePages = state.workload.kind === "ab"
      ? (state.workload.range ?? this.#blockLength) / 4096
      : 1;
    if (!Number.isInteger(state.abCursor) || state.abCursor < 0 || state.abCursor >= rangePages) {
      throw new VcpuError(
        `Invalid vCPU state: ab cursor ${state.abCursor} outside 0..${rangePages - 1}`,
      );
    }
    if (!Number.isSafeInteger(state.ops) || state.ops < 0) {
      throw new VcpuError(`Invalid vCPU state: op counter ${state.ops} is not a safe integer`);
    }
    if (!isValidPrngState(state.prng)) {
      throw new VcpuError(`Invalid vCPU state: PRNG state must be four u32 words, not all zero`);
    }
    const ctl = this.#ctl;
    writeWorkload(ctl, state.workload);
    Atomics.store(ctl, CTL.AB_CURSOR, state.abCursor);
    Atomics.store(this.#big, OPS_INDEX64, BigInt(state.ops));
    for (let i = 0; i < 4; i++) Atomics.store(ctl, CTL.PRNG + i, state.prng[i] | 0);
    this.#workload = state.workload;
  }

  /** Tells the worker to exit, waits briefly for it, then terminates it. Idempotent. */
  terminate(): void {
    if (this.#terminated) return;
    this.#terminated = true;
    this.#running = false;
    if (this.#failure === null) {
      const want = this.#command(OP.EXIT);
      const deadline = performance.now() + 100;
      let seen: number;
      while ((seen = Atomics.load(this.#ctl, CTL.ACK)) !== want && seen !== ACK_FAILED) {
        const left = deadline - performance.now();
        if (left <= 0) break;
        Atomics.wait(this.#ctl, CTL.ACK, seen, left);
      }
    }
    this.#worker.terminate();
  }

  #command(op: number): number {
    this.#sequence = (this.#sequence + 1) & 0x1fffffff;
    const word = commandWord(this.#sequence, op);
    Atomics.store(this.#ctl, CTL.CMD, word);
    Atomics.notify(this.#ctl, CTL.CMD);
    return word;
  }

  #awaitAck(want: number, what: string): void {
    const ctl = this.#ctl;
    const deadline = performance.now() + STOP_TIMEOUT_MS;
    for (;;) {
      const seen = Atomics.load(ctl, CTL.ACK);
      if (seen === want) return;
      if (seen === ACK_FAILED) {
        throw new VcpuError(
          `vCPU worker died before it could ${what}: ${this.#failure ?? "unknown error"}`,
        );
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new VcpuError(`vCPU worker did not acknowledge ${what} within ${STOP_TIMEOUT_MS} ms`);
      }
      Atomics.wait(ctl, CTL.ACK, seen, Math.min(left, 50));
    }
  }

  #assertAlive(what: string): void {
    if (this.#failure === null && Atomics.load(this.#ctl, CTL.ACK) === ACK_FAILED) {
      this.#failure = "the workload crashed";
    }
    if (this.#terminated) throw new VcpuError(`Cannot ${what} a terminated vCPU`);
    if (this.#failure !== null) {
      throw new VcpuError(`Cannot ${what} the vCPU: the worker failed: ${this.#failure}`);
    }
  }
}
