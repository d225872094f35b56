import type { Disk } from "./disk.ts";
import type { RamBlock } from "./ram.ts";

/** QEMU's run states, by QEMU's names. */
export const RUN_STATES = [
  "prelaunch",
  "running",
  "paused",
  "inmigrate",
  "finish-migrate",
  "postmigrate",
] as const;

/** One of {@link RUN_STATES}. */
export type RunState = typeof RUN_STATES[number];

/**
 * What the migration engine needs from a guest machine: its RAM blocks, stop and
 * start, its run state, and its device state as bytes. `vm/vm.ts` implements it
 * with a vCPU worker; tests may implement it with plain memory.
 */
export interface Guest {
  /** RAM blocks in a fixed order ("pc.ram" first). */
  readonly blocks: readonly RamBlock[];
  /** Current run state. */
  readonly runState: RunState;
  /**
   * Stops the vCPU and returns once it has acknowledged (well under 1 ms), then
   * sets the run state to `next`. Stopping a stopped guest just changes the state.
   */
  stop(next: RunState): void;
  /** Starts (or resumes) the vCPU; the run state becomes "running". */
  start(): void;
  /** Sets the run state without touching the vCPU (e.g. "inmigrate", "postmigrate"). */
  setRunState(state: RunState): void;
  /** Sets the vCPU throttle: the share (0-99 %) of each time slice the vCPU sleeps. */
  setThrottle(percent: number): void;
  /** The vCPU's device state, serialized as the `vcpu` section's fields (big-endian). */
  saveDeviceState(): Uint8Array;
  /** Loads device state written by saveDeviceState on another guest; throws on bad input. */
  loadDeviceState(bytes: Uint8Array): void;
  /** Field list of the device state, for the stream's vmdescription JSON. */
  readonly deviceFields: readonly DeviceField[];
  /** The guest's disk, when it has one (block migration copies it). */
  readonly disk?: Disk;
  /**
   * An emulated machine's device state (the x86 guest's), which travels in the
   * `x86` section instead of the synthetic vCPU's `vcpu` section; absent on the
   * synthetic guest.
   */
  readonly machine?: MachineDevices;
  /**
   * Why this guest cannot run at all (a QEMU image held, not run: vm/qemu_image.ts),
   * or null; absent on guests that can.
   */
  startBlocker?(): string | null;
  /** Why this guest cannot be migrated right now (its own blocker), or null. */
  migrationBlocker?(): string | null;
  /** Listeners see every run-state change. */
  onRunStateChange(listener: (from: RunState, to: RunState) => void): () => void;
}

/** One field of a device section, as QEMU's vmdescription JSON describes it. */
export interface DeviceField {
  readonly name: string;
  readonly type: "uint8" | "uint16" | "uint32" | "uint64" | "buffer";
  readonly size: number;
}

/** What an emulated machine's device section carries besides RAM. */
export interface MachineState {
  /** The emulator's own state of every device, without RAM. */
  readonly devices: Uint8Array;
  /** The tail of the serial console's output, so the destination's console continues it. */
  readonly console: Uint8Array;
  /** The console offset of the tail's first byte (bytes printed before it). */
  readonly consoleOffset: number;
}

/**
 * The device state of an emulated machine, taken and loaded on the emulator's own
 * thread (hence promises). Both ends must run the same emulator version.
 */
export interface MachineDevices {
  /** The emulator and its version, e.g. `v86 0.5.462`; a stream from another is refused. */
  readonly version: string;
  /** The state, taken with the guest stopped. */
  save(): Promise<MachineState>;
  /** Throws VmError `invalid-device-state` unless `devices` is a state this machine can load. */
  check(devices: Uint8Array): void;
  /**
   * Loads a state from {@link save} of another machine, then the RAM blocks' pages,
   * leaving the machine stopped and ready to run.
   */
  load(state: MachineState): Promise<void>;
}
