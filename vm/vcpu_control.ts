/**
 * Layout of the vCPU control block: an Int32Array over a SharedArrayBuffer shared by
 * the main thread ({@link ../vcpu.ts}) and the vCPU worker. While the vCPU is stopped
 * the block is the source of truth for the guest program (workload, cursor, counter,
 * PRNG); the worker reloads it on every resume and publishes back at every slice.
 */
import type { DiskShared } from "./disk.ts";
import type { RamBlockShared } from "./ram.ts";
import { WORKLOAD_KIND_CODES, type WorkloadSpec } from "./workload.ts";

/** Int32 word indices in the control block. */
export const CTL = {
  /** Command word: `(sequence << 2) | op`, written by the main thread. */
  CMD: 0,
  /** Acknowledged command: the worker copies CMD here once it obeys it. */
  ACK: 1,
  /** Throttle percentage 0-99: the share of each slice's wall time the worker sleeps. */
  THROTTLE: 2,
  /** Workload kind code ({@link WORKLOAD_KIND_CODES}). */
  KIND: 3,
  /** Rate in bytes/s, low 32 bits (0 = unlimited). */
  RATE_LO: 4,
  /** Rate in bytes/s, high bits. */
  RATE_HI: 5,
  /** `ab` range in pages; 0 = the whole first block. */
  RANGE_PAGES: 6,
  /** `random` hot set size in percent of pages; 0 = no hot set. */
  HOT_PAGES: 7,
  /** `random` share of ops landing in the hot set, percent. */
  HOT_OPS: 8,
  /** `random` bytes written per op. */
  BYTES: 9,
  /** `ab` cursor: the page the next op increments. */
  AB_CURSOR: 10,
  /** Op counter (64-bit, see {@link OPS_INDEX64}) occupies words 12-13. */
  OPS: 12,
  /** xorshift128 state, words 14-17. */
  PRNG: 14,
  /** `random` disk writes in bytes/s (0 = none), low 32 bits. */
  DISK_RATE_LO: 18,
  /** `random` disk writes in bytes/s, high bits. */
  DISK_RATE_HI: 19,
} as const;

/** Size of the control block in 32-bit words (a multiple of 2 for the 64-bit view). */
export const CTL_WORDS = 20;

/** Index of the op counter in a BigInt64Array over the control block. */
export const OPS_INDEX64 = CTL.OPS / 2;

/** The op field of the command word. */
export const OP = {
  /** Stop at the next slice boundary and acknowledge. */
  STOP: 0,
  /** Run the workload. */
  RUN: 1,
  /** Acknowledge and leave the worker loop. */
  EXIT: 2,
} as const;

/** Mask of the op field in the command word. */
export const OP_MASK = 3;

/** Builds a command word from a sequence number and an op. */
export function commandWord(sequence: number, op: number): number {
  return (((sequence & 0x1fffffff) << 2) | op) | 0;
}

/** Writes a workload's parameters into the control block (only while the vCPU is stopped). */
export function writeWorkload(ctl: Int32Array, spec: WorkloadSpec): void {
  const rate = spec.kind === "idle" ? 0 : spec.rate;
  Atomics.store(ctl, CTL.KIND, WORKLOAD_KIND_CODES[spec.kind]);
  Atomics.store(ctl, CTL.RATE_LO, rate % 2 ** 32);
  Atomics.store(ctl, CTL.RATE_HI, Math.floor(rate / 2 ** 32));
  Atomics.store(
    ctl,
    CTL.RANGE_PAGES,
    spec.kind === "ab" && spec.range !== null ? spec.range / 4096 : 0,
  );
  Atomics.store(ctl, CTL.HOT_PAGES, spec.kind === "random" && spec.hot ? spec.hot.pagesPercent : 0);
  Atomics.store(ctl, CTL.HOT_OPS, spec.kind === "random" && spec.hot ? spec.hot.opsPercent : 0);
  Atomics.store(ctl, CTL.BYTES, spec.kind === "random" ? spec.bytes : 0);
  const disk = spec.kind === "random" ? spec.disk ?? 0 : 0;
  Atomics.store(ctl, CTL.DISK_RATE_LO, disk % 2 ** 32);
  Atomics.store(ctl, CTL.DISK_RATE_HI, Math.floor(disk / 2 ** 32));
}

/** Reads the rate (bytes/s) stored in the control block. */
export function readRate(ctl: Int32Array): number {
  return (Atomics.load(ctl, CTL.RATE_HI) >>> 0) * 2 ** 32 + (Atomics.load(ctl, CTL.RATE_LO) >>> 0);
}

/** ACK value the worker stores when the workload crashed; the vCPU is then dead. */
export const ACK_FAILED = -2;

/** One RAM block as handed to the worker (rebuilt there with `new RamBlock(name, length, shared)`). */
export interface VcpuBlockInit {
  readonly name: string;
  readonly length: number;
  readonly shared: RamBlockShared;
}

/** The one message the main thread posts to a new vCPU worker. */
export interface VcpuInitMessage {
  readonly type: "init";
  readonly control: SharedArrayBuffer;
  readonly blocks: readonly VcpuBlockInit[];
  /** The guest's disk, when it has one (the worker opens the image itself). */
  readonly disk?: DiskShared;
}

/** Messages the worker posts back: ready after init, or the error that killed it. */
export type VcpuWorkerMessage =
  | { readonly type: "ready" }
  | { readonly type: "error"; readonly message: string };
