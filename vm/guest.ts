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
  /** Listeners see every run-state change. */
  onRunStateChange(listener: (from: RunState, to: RunState) => void): () => void;
}

/** One field of a device section, as QEMU's vmdescription JSON describes it. */
export interface DeviceField {
  readonly name: string;
  readonly type: "uint8" | "uint16" | "uint32" | "uint64" | "buffer";
  readonly size: number;
}
