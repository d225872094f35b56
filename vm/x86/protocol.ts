/**
 * The messages between the x86 guest ({@link ./x86_guest.ts}, main thread) and its
 * emulator worker ({@link ./worker.ts}). Commands the engine needs synchronously
 * (stop, run, sync RAM) are acknowledged through a shared control block the main
 * thread waits on with Atomics.wait; the rest are plain messages.
 * @module
 */
import type { RamBlockShared } from "../ram.ts";

/** Int32 word indices of the control block. */
export const X86_CTL = {
  /** The sequence number of the last command the worker finished (or {@link ACK_FAILED}). */
  ACK: 0,
  /** 1 while the emulator is meant to run (between a run and a stop command). */
  RUNNING: 1,
  /** Throttle percentage 0-99: the share of each 10 ms slice the emulator does not run. */
  THROTTLE: 2,
  /** Pages found changed by the last sync. */
  CHANGED: 3,
} as const;

/** Words in the control block. */
export const X86_CTL_WORDS = 4;

/** ACK value once the worker has failed; every later command fails at once. */
export const ACK_FAILED = -1;

/** The commands that are acknowledged through the control block. */
export type X86Command = "stop" | "run" | "sync";

/** How the worker builds its machine. */
export interface X86WorkerMachine {
  readonly memoryBytes: number;
  readonly bios: Uint8Array;
  readonly kernel?: Uint8Array;
  readonly initrd?: Uint8Array;
  readonly append?: string;
}

/** Main thread → worker. */
export type ToX86Worker =
  | {
    readonly type: "init";
    readonly control: SharedArrayBuffer;
    /** The copy of guest RAM the migration reads and writes (`pc.ram`), in a shared memory. */
    readonly ram: RamBlockShared & { readonly memory: WebAssembly.Memory };
    readonly machine: X86WorkerMachine;
    /** Fault the emulator's RAM in now, not page by page during a migration's downtime. */
    readonly prefault: boolean;
  }
  | { readonly type: "command"; readonly seq: number; readonly command: X86Command }
  | { readonly type: "throttle"; readonly percent: number }
  | { readonly type: "input"; readonly text: string }
  | { readonly type: "save"; readonly id: number }
  /**
   * Copy these pages (one bit per page) of the RAM copy into the emulator: pages an
   * incoming stream wrote, copied over during pre-copy so the load has few left.
   */
  | { readonly type: "pull"; readonly pages: Uint32Array }
  /** Load device state, then bring the emulator's RAM to the copy (`pages`: written since the last pull). */
  | {
    readonly type: "load";
    readonly id: number;
    readonly devices: Uint8Array;
    readonly pages: Uint32Array | null;
  }
  | { readonly type: "exit" };

/** Worker → main thread. */
export type FromX86Worker =
  | { readonly type: "ready" }
  | { readonly type: "console"; readonly bytes: Uint8Array }
  | { readonly type: "saved"; readonly id: number; readonly devices: Uint8Array }
  | { readonly type: "loaded"; readonly id: number }
  | {
    readonly type: "failed";
    readonly id: number;
    readonly message: string;
    readonly code?: string;
  }
  | { readonly type: "exited" }
  | { readonly type: "error"; readonly message: string };
