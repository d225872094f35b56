/**
 * The guest machine: one RAM block `pc.ram`, a vCPU worker running a workload over
 * it, QEMU's run states, and the vCPU's device state for migration. Implements
 * {@link Guest}, which is all the migration engine sees.
 */
import type { DeviceField, Guest, RunState } from "./guest.ts";
import { checkSetRunState, checkStopTarget, checkThrottle, notifyRunState } from "./run_state.ts";
import { VmError } from "./error.ts";
import { decodeVcpuState, encodeVcpuState, VCPU_DEVICE_FIELDS } from "./device_state.ts";
import { digestBlocks, type RamDigest } from "./digest.ts";
import { Disk, type DiskDigest } from "./disk.ts";
import { fillFromImage, type FillMode, fillRam, isFillMode } from "./fill.ts";
import { PAGE_SIZE, parseSize, RamBlock } from "./ram.ts";
import { Vcpu } from "./vcpu.ts";
import {
  assertWorkloadFits,
  formatWorkload,
  parseWorkload,
  type WorkloadSpec,
} from "./workload.ts";

/** Re-exported so users of the guest import its error type from here. */
export { VmError } from "./error.ts";

/** Name of the main RAM block, as in QEMU's pc machine. */
export const MAIN_RAM_BLOCK = "pc.ram";

/** Seed used when {@link VmOptions.seed} is absent, so runs are reproducible by default. */
export const DEFAULT_SEED = 1;

/** Options of {@link Vm.create}. */
export interface VmOptions {
  /** RAM size in bytes, or a size text like `512M` (multiple of 4096). */
  readonly ramSize: number | string;
  /** The vCPU's program, as a spec or `--workload` text (default `idle`). */
  readonly workload?: WorkloadSpec | string;
  /** How RAM is prepared before start (default `zero`). */
  readonly fill?: FillMode;
  /** A RAM image file loaded into RAM before start (`--fill image:PATH`), instead of `fill`. */
  readonly image?: string;
  /** Fault all of RAM in at creation, as a destination should before a migration. */
  readonly prefault?: boolean;
  /** Seeds the random fill and the vCPU's PRNG (default {@link DEFAULT_SEED}). */
  readonly seed?: number;
  /** A raw disk image (`--disk`), created at `size` bytes when absent (`--disk-size`). */
  readonly disk?: { readonly path: string; readonly size?: number };
}

/** What `GET /vm` reports: plain JSON. */
export interface VmInfo {
  /** Which guest: ferry's synthetic vCPU, or a Linux PC (vm/x86). */
  readonly guest: "synthetic" | "x86";
  readonly run_state: RunState;
  readonly ram_size: number;
  readonly page_size: number;
  /** Canonical workload text, e.g. `random:hot=10%:90%`. */
  readonly workload: string;
  readonly throttle: number;
  /** Ops the synthetic vCPU has run; null for x86. */
  readonly ops: number | null;
}

/** Listener of run-state changes. */
export type RunStateListener = (from: RunState, to: RunState) => void;

/**
 * A guest machine. Create with {@link Vm.create}; it starts in `prelaunch` with the
 * vCPU stopped. The vCPU runs exactly while the run state is `running`. Close it
 * (`close()` or `await using`) to terminate the worker.
 */
export class Vm implements Guest, AsyncDisposable, Disposable {
  /** RAM blocks: just `pc.ram`. */
  readonly blocks: readonly RamBlock[];
  /** The `vcpu` device section's fields, for the vmdescription JSON. */
  readonly deviceFields: readonly DeviceField[] = VCPU_DEVICE_FIELDS;
  /** The guest's disk, when it has one. */
  readonly disk?: Disk;
  readonly #vcpu: Vcpu;
  readonly #listeners = new Set<RunStateListener>();
  #runState: RunState = "prelaunch";
  #closed = false;

  private constructor(blocks: readonly RamBlock[], vcpu: Vcpu, disk?: Disk) {
    this.blocks = blocks;
    this.#vcpu = vcpu;
    if (disk) this.disk = disk;
  }

  /**
   * Allocates RAM, prefaults and fills it as asked, and starts a (stopped) vCPU
   * worker. Throws RamError for a bad size, WorkloadError for a bad or oversized
   * workload, VmError for a bad fill or seed.
   */
  static async create(options: VmOptions): Promise<Vm> {
    const ramSize = typeof options.ramSize === "string"
      ? parseSize(options.ramSize)
      : options.ramSize;
    const workload = typeof options.workload === "string"
      ? parseWorkload(options.workload)
      : options.workload ?? { kind: "idle" };
    const fill = options.fill ?? "zero";
    if (!isFillMode(fill)) {
      throw new VmError(
        "invalid-argument",
        `Invalid fill "${fill}": expected zero, random or pattern`,
      );
    }
    const seed = options.seed ?? DEFAULT_SEED;
    if (!Number.isSafeInteger(seed)) {
      throw new VmError("invalid-argument", `Invalid seed ${seed}: expected an integer`);
    }
    const block = new RamBlock(MAIN_RAM_BLOCK, ramSize);
    assertWorkloadFits(workload, block.length);
    // A random or pattern fill writes every page, which faults it in: prefault only zero RAM.
    if (options.prefault && fill === "zero" && options.image === undefined) block.prefault();
    if (options.image !== undefined) {
      try {
        fillFromImage(block, options.image);
      } catch (e) {
        const why = e instanceof Deno.errors.NotFound
          ? `the image ${options.image} does not exist`
          : (e as Error).message;
        throw new VmError("invalid-argument", `Cannot fill RAM from an image: ${why}`, {
          cause: e,
        });
      }
    } else fillRam(block, fill, seed);
    if (workload.kind === "random" && workload.disk && !options.disk) {
      throw new VmError("invalid-argument", "Workload disk=RATE needs a disk (--disk PATH)");
    }
    const disk = options.disk ? Disk.open(options.disk.path, options.disk.size) : undefined;
    try {
      const vcpu = await Vcpu.create({
        blocks: [block],
        workload,
        seed: seed ^ 0x7f4a7c15,
        ...(disk ? { disk: disk.shared } : {}),
      });
      return new Vm([block], vcpu, disk);
    } catch (e) {
      disk?.close();
      throw e;
    }
  }

  /** Current run state. */
  get runState(): RunState {
    return this.#runState;
  }

  /** Total RAM in bytes. */
  get ramSize(): number {
    return this.blocks.reduce((sum, b) => sum + b.length, 0);
  }

  /** The program the vCPU runs (changes when device state is loaded). */
  get workload(): WorkloadSpec {
    return this.#vcpu.workload;
  }

  /** Throttle percentage (0-99). */
  get throttle(): number {
    return this.#vcpu.throttle;
  }

  /** Guest ops executed since creation (carried over by device state). */
  get opsCount(): number {
    return this.#vcpu.opsCount;
  }

  /** True once closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Starts or resumes the vCPU; the run state becomes `running`. */
  start(): void {
    this.#assertOpen("start");
    this.#vcpu.start();
    this.#setState("running");
  }

  /**
   * Stops the vCPU — returning only once it has acknowledged, so RAM no longer
   * changes — then sets the run state to `next` (default `paused`). On a closed
   * guest only the run state changes.
   */
  stop(next: RunState = "paused"): void {
    checkStopTarget(next);
    if (!this.#closed) this.#vcpu.stop();
    this.#setState(next);
  }

  /**
   * Sets the run state without touching the vCPU (e.g. `inmigrate`, `postmigrate`).
   * `running` is refused unless already running: only start() makes the vCPU run.
   */
  setRunState(state: RunState): void {
    checkSetRunState(this.#runState, state);
    this.#setState(state);
  }

  /** Sets the share (integer 0-99 %) of each time slice the vCPU sleeps. */
  setThrottle(percent: number): void {
    this.#assertOpen("throttle");
    checkThrottle(percent);
    this.#vcpu.setThrottle(percent);
  }

  /** Subscribes to run-state changes; returns the unsubscribe function. */
  onRunStateChange(listener: RunStateListener): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /**
   * The `vcpu` device state (see {@link VCPU_DEVICE_FIELDS}). Meaningful when stopped;
   * while running it is a snapshot as of the last slice boundary.
   */
  saveDeviceState(): Uint8Array {
    this.#assertOpen("save device state of");
    return encodeVcpuState(this.#vcpu.readState());
  }

  /**
   * Loads device state saved by another guest: the workload, its cursor, counter and
   * PRNG. Only while stopped; throws VmError (`invalid-device-state`) on bad input.
   */
  loadDeviceState(bytes: Uint8Array): void {
    this.#assertOpen("load device state into");
    if (this.#runState === "running") {
      throw new VmError("invalid-run-state", "Cannot load device state while the guest is running");
    }
    const state = decodeVcpuState(bytes, this.blocks[0].length);
    this.#vcpu.writeState(state);
  }

  /** SHA-256 per RAM block and overall; stop the guest first for a meaningful result. */
  digest(): Promise<RamDigest> {
    return digestBlocks(this.blocks);
  }

  /** SHA-256 of the disk image, or null without a disk; stop the guest first. */
  diskDigest(): Promise<DiskDigest | null> {
    return this.disk ? this.disk.digest() : Promise.resolve(null);
  }

  /** Plain JSON description for `GET /vm`. */
  info(): VmInfo {
    return {
      guest: "synthetic",
      run_state: this.#runState,
      ram_size: this.ramSize,
      page_size: PAGE_SIZE,
      workload: formatWorkload(this.workload),
      throttle: this.throttle,
      ops: this.opsCount,
    };
  }

  /** Stops and terminates the vCPU worker. Idempotent; the run state is left as is. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#vcpu.terminate();
    this.disk?.close();
    this.#listeners.clear();
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Same as close(), for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  #setState(to: RunState): void {
    const from = this.#runState;
    if (from === to) return;
    this.#runState = to;
    notifyRunState(this.#listeners, from, to);
  }

  #assertOpen(what: string): void {
    if (this.#closed) throw new VmError("closed", `Cannot ${what} the guest: it is closed`);
  }
}
