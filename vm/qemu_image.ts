/**
 * The guest of a ferry started with `--peer qemu`: a QEMU guest's RAM blocks and
 * device sections, held but never run (docs/ARCHITECTURE.md, "QEMU peers"). ferry
 * cannot interpret QEMU's device state, so it keeps it verbatim: the guest can be
 * inspected (GET /vm/ram, the digest), saved to a file and migrated on to a QEMU,
 * which resumes it.
 * @module
 */
import type { DeviceField, Guest, RunState } from "./guest.ts";
import { checkSetRunState, checkStopTarget, checkThrottle, notifyRunState } from "./run_state.ts";
import { VmError } from "./error.ts";
import { digestBlocks, type RamDigest } from "./digest.ts";
import { type FillMode, fillRam } from "./fill.ts";
import { PAGE_SIZE, parseSize, RamBlock } from "./ram.ts";

/** QEMU's main RAM block on the pc and q35 machines (sized by its `-m`). */
export const QEMU_MAIN_BLOCK = "pc.ram";
/** Most bytes of RAM blocks besides pc.ram (ROMs, option ROMs, video RAM) a stream may list. */
export const MAX_EXTRA_BLOCK_BYTES = 64 << 20;
/** The machine type a QEMU 7.2 `-machine pc` names, written when no stream named another. */
export const DEFAULT_QEMU_MACHINE = "pc-i440fx-7.2";

/** One device section of a QEMU stream, as it came: header fields and payload. */
export interface QemuDeviceSection {
  readonly id: number;
  readonly name: string;
  readonly instance: number;
  readonly version: number;
  readonly payload: Uint8Array;
}

/** What a QEMU stream left besides RAM: enough to replay it to another QEMU. */
export interface QemuPeerState {
  /** The configuration section's machine type, e.g. `pc-i440fx-7.2`. */
  readonly machine: string;
  /** The `ram` section's id in the stream (QEMU 7.2's pc: 2). */
  readonly ramSectionId: number;
  /** Every device section, in stream order. */
  readonly devices: readonly QemuDeviceSection[];
  /** Each device section's entry of the stream's vmdescription, in the same order. */
  readonly descriptions: readonly Record<string, unknown>[];
}

/** Options of {@link QemuImage.create}. */
export interface QemuImageOptions {
  /** pc.ram's size: the QEMU peer's `-m` (bytes or a size text like `32M`). */
  readonly ramSize: number | string;
  /** How pc.ram is prepared (default zero), to send a ferry-made guest to a QEMU. */
  readonly fill?: FillMode;
  /** Fault all of pc.ram in at creation. */
  readonly prefault?: boolean;
}

/** What GET /vm reports of a QEMU image. */
export interface QemuImageInfo {
  readonly guest: "qemu";
  readonly run_state: RunState;
  readonly ram_size: number;
  readonly page_size: number;
  readonly workload: string;
  readonly throttle: number;
  readonly ops: null;
  readonly not_runnable: string;
  readonly qemu: {
    readonly machine: string | null;
    readonly blocks: { readonly name: string; readonly length: number }[];
    readonly device_sections: number;
  };
}

/**
 * A QEMU guest held by ferry. Its blocks are pc.ram (fixed at creation) and the
 * blocks the last stream listed beside it ({@link adoptBlocks}); its device state
 * is the last stream's device sections ({@link setPeerState}). start() always
 * refuses, saying why ({@link startBlocker}).
 */
export class QemuImage implements Guest {
  readonly #main: RamBlock;
  #extra: RamBlock[] = [];
  #peer: QemuPeerState | null = null;
  #runState: RunState = "prelaunch";
  readonly #listeners = new Set<(from: RunState, to: RunState) => void>();
  /** No disk: QEMU's block devices are not part of what ferry holds. */
  readonly disk: undefined = undefined;
  /** No vcpu section: QEMU's device state travels in its own sections. */
  readonly deviceFields: readonly DeviceField[] = [];

  private constructor(main: RamBlock) {
    this.#main = main;
  }

  /** A QEMU image with a pc.ram of `ramSize` bytes and nothing else yet. */
  static create(options: QemuImageOptions): QemuImage {
    const size = typeof options.ramSize === "string" ? parseSize(options.ramSize) : options.ramSize;
    const main = new RamBlock(QEMU_MAIN_BLOCK, size);
    const fill = options.fill ?? "zero";
    if (options.prefault && fill === "zero") main.prefault();
    fillRam(main, fill);
    return new QemuImage(main);
  }

  /** pc.ram first, then the other blocks in the order the last stream listed them. */
  get blocks(): readonly RamBlock[] {
    return [this.#main, ...this.#extra];
  }

  /** What the last QEMU stream left besides RAM, or null. */
  get peer(): QemuPeerState | null {
    return this.#peer;
  }

  /**
   * Makes the blocks those a stream's block list names: pc.ram must be listed with
   * this image's size; every other block (at most {@link MAX_EXTRA_BLOCK_BYTES} in
   * all, whole pages) is kept if it has the same length, else made anew, zeroed.
   * Blocks the list does not name are dropped. Throws VmError `invalid-argument`
   * naming what does not fit.
   */
  adoptBlocks(list: readonly { readonly name: string; readonly length: number }[]): void {
    if (this.#runState === "running") {
      throw new VmError("invalid-run-state", "Cannot change RAM blocks of a running guest");
    }
    const main = list.find((b) => b.name === QEMU_MAIN_BLOCK);
    if (!main) {
      throw new VmError("invalid-argument", `the stream lists no "${QEMU_MAIN_BLOCK}" RAM block`);
    }
    if (main.length !== this.#main.length) {
      throw new VmError(
        "invalid-argument",
        `the stream's "${QEMU_MAIN_BLOCK}" holds ${main.length} bytes, this ferry's ` +
          `${this.#main.length}: start it with --ram ${main.length} (the QEMU peer's -m)`,
      );
    }
    let extra = 0;
    const names = new Set<string>();
    for (const b of list) {
      if (names.has(b.name)) {
        throw new VmError("invalid-argument", `RAM block "${b.name}" listed twice`);
      }
      names.add(b.name);
      if (b.name === QEMU_MAIN_BLOCK) continue;
      if (!Number.isSafeInteger(b.length) || b.length <= 0 || b.length % PAGE_SIZE !== 0) {
        throw new VmError(
          "invalid-argument",
          `RAM block "${b.name}" of ${b.length} bytes is not a positive number of pages`,
        );
      }
      extra += b.length;
    }
    if (extra > MAX_EXTRA_BLOCK_BYTES) {
      throw new VmError(
        "invalid-argument",
        `the stream lists ${extra} bytes of RAM blocks besides "${QEMU_MAIN_BLOCK}" ` +
          `(at most ${MAX_EXTRA_BLOCK_BYTES})`,
      );
    }
    const old = new Map(this.#extra.map((b) => [b.name, b]));
    this.#extra = list.filter((b) => b.name !== QEMU_MAIN_BLOCK).map((b) => {
      const kept = old.get(b.name);
      return kept && kept.length === b.length ? kept : new RamBlock(b.name, b.length);
    });
  }

  /** Keeps what a QEMU stream carried besides RAM (called once the whole stream checked out). */
  setPeerState(state: QemuPeerState): void {
    this.#peer = state;
  }

  /** Why this guest cannot run: always a reason (ferry holds QEMU's state, it does not run it). */
  startBlocker(): string {
    const held = this.#peer
      ? `it holds a QEMU guest (${this.#peer.machine}, ${this.#peer.devices.length} device ` +
        `sections) whose device state ferry keeps but cannot run`
      : "it holds QEMU guest RAM without a CPU to run it";
    return `${held}: migrate it to a QEMU to resume it (the qemu profile, --peer qemu)`;
  }

  get runState(): RunState {
    return this.#runState;
  }

  stop(next: RunState): void {
    checkStopTarget(next);
    this.#setState(next);
  }

  start(): void {
    throw new VmError("unsupported", `Cannot start the guest: ${this.startBlocker()}`);
  }

  setRunState(state: RunState): void {
    checkSetRunState(this.#runState, state);
    this.#setState(state);
  }

  setThrottle(percent: number): void {
    checkThrottle(percent);
  }

  saveDeviceState(): Uint8Array {
    return new Uint8Array(0);
  }

  loadDeviceState(_bytes: Uint8Array): void {
    throw new VmError(
      "invalid-device-state",
      "a QEMU image takes device state only as QEMU's own sections",
    );
  }

  onRunStateChange(listener: (from: RunState, to: RunState) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** SHA-256 per RAM block and overall. */
  digest(): Promise<RamDigest> {
    return digestBlocks(this.blocks);
  }

  /** Plain JSON for GET /vm: what is held, and why it does not run. */
  info(): QemuImageInfo {
    return {
      guest: "qemu",
      run_state: this.#runState,
      ram_size: this.blocks.reduce((n, b) => n + b.length, 0),
      page_size: PAGE_SIZE,
      workload: "none",
      throttle: 0,
      ops: null,
      not_runnable: this.startBlocker(),
      qemu: {
        machine: this.#peer?.machine ?? null,
        blocks: this.blocks.map((b) => ({ name: b.name, length: b.length })),
        device_sections: this.#peer?.devices.length ?? 0,
      },
    };
  }

  /** Nothing runs, so nothing to end; for the same life cycle as the other guests. */
  close(): void {
    this.#listeners.clear();
  }

  #setState(to: RunState): void {
    const from = this.#runState;
    if (from === to) return;
    this.#runState = to;
    notifyRunState(this.#listeners, from, to);
  }
}
