/**
 * Where a multifd channel's packets are filled or applied (docs/ARCHITECTURE.md,
 * "Multifd"): a Web Worker per channel (`workerRunner`), or the calling thread
 * (`inlineRunner`, for tests). Each runner owns its channel's packet slots:
 * SharedArrayBuffers the worker writes packets into (source) or reads them from
 * (destination), so a page is copied once between guest RAM and the socket.
 * @module
 */
import type { RamBlock, RamBlockShared } from "../../vm/ram.ts";
import type { Codec } from "../format/compression.ts";
import { sharedKernels } from "../wasm/kernels.ts";
import { MultifdError, SLOT_BYTES } from "./packet.ts";
import {
  applyPacket,
  type ApplyResult,
  type FillCompression,
  type FillJob,
  fillPacket,
  type FillResult,
} from "./pages.ts";

/** Packet slots per channel: one being filled or applied while the other is on the wire. */
export const SLOTS_PER_CHANNEL = 2;

/** What a channel's packets are handed to. */
export interface PacketRunner extends Disposable {
  /** The channel's slots, SLOT_BYTES each. */
  readonly slots: readonly Uint8Array[];
  /** Fills slot `slot` with the packet for `job` (source). */
  fill(slot: number, job: FillJob): Promise<FillResult>;
  /** Checks and applies the packet of `length` bytes in slot `slot`, at byte `at` of the channel (destination). */
  apply(slot: number, length: number, at: number): Promise<ApplyResult>;
}

/** How a runner is set up: the guest's blocks and the channel's codec. */
export interface RunnerOptions {
  readonly blocks: readonly RamBlock[];
  /** Channel index (named in errors). */
  readonly channel: number;
  /** Source: how to compress (null plain). */
  readonly compression?: FillCompression;
  /** Destination: the codec compressed packets must use (null: none accepted). */
  readonly codec?: Codec | null;
}

/** Makes a runner for one channel. */
export type RunnerFactory = (options: RunnerOptions) => PacketRunner;

/** The worker's first message. */
export interface WorkerInit {
  readonly type: "init";
  readonly blocks: readonly { readonly name: string; readonly shared: RamBlockShared }[];
  readonly slots: readonly Uint8Array[];
  readonly channel: number;
  readonly compression: FillCompression;
  readonly codec: Codec | null;
}

/** A job for the worker. */
export type WorkerRequest =
  | { readonly type: "fill"; readonly id: number; readonly slot: number; readonly job: FillJob }
  | {
    readonly type: "apply";
    readonly id: number;
    readonly slot: number;
    readonly length: number;
    readonly at: number;
  };

/** The worker's answer to one job. */
export type WorkerReply =
  | { readonly id: number; readonly ok: true; readonly result: FillResult | ApplyResult }
  | {
    readonly id: number;
    readonly ok: false;
    readonly error: {
      readonly name: string;
      readonly message: string;
      readonly channel?: number;
      readonly offset?: number;
      readonly reason?: string;
    };
  };

function newSlots(): Uint8Array[] {
  return Array.from(
    { length: SLOTS_PER_CHANNEL },
    () => new Uint8Array(new SharedArrayBuffer(SLOT_BYTES)),
  );
}

/** A runner on the calling thread (tests): the same code as the worker, without the thread. */
export const inlineRunner: RunnerFactory = (options) => {
  const slots = newSlots();
  const kernels = sharedKernels();
  return {
    slots,
    fill: (slot, job) =>
      Promise.resolve().then(() =>
        fillPacket(options.blocks, slots[slot], job, kernels, options.compression ?? null)
      ),
    apply: (slot, length, at) =>
      Promise.resolve().then(() =>
        applyPacket(
          options.blocks,
          slots[slot],
          length,
          options.channel,
          at,
          kernels,
          options.codec ?? null,
        )
      ),
    [Symbol.dispose]() {},
  };
};

/**
 * A runner backed by a Web Worker (worker.ts) that sees guest RAM through the
 * blocks' SharedArrayBuffers. The guest's blocks must be shared memory the
 * worker can rebuild (the synthetic guest's are).
 */
export const workerRunner: RunnerFactory = (options) => {
  const slots = newSlots();
  const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
  const waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let ids = 0;
  let dead: Error | null = null;
  const failAll = (e: Error) => {
    dead ??= e;
    for (const w of waiting.values()) w.reject(e);
    waiting.clear();
  };
  worker.onmessage = (event: MessageEvent<WorkerReply>) => {
    const reply = event.data;
    const w = waiting.get(reply.id);
    if (!w) return;
    waiting.delete(reply.id);
    if (reply.ok) w.resolve(reply.result);
    else {
      const e = reply.error;
      w.reject(
        e.name === "MultifdError"
          ? new MultifdError(e.channel!, e.offset!, e.reason!)
          : new Error(e.message),
      );
    }
  };
  worker.onerror = (event: ErrorEvent) => {
    event.preventDefault();
    failAll(new Error(`multifd worker of channel ${options.channel} failed: ${event.message}`));
  };
  const init: WorkerInit = {
    type: "init",
    blocks: options.blocks.map((b) => ({ name: b.name, shared: b.shared })),
    slots,
    channel: options.channel,
    compression: options.compression ?? null,
    codec: options.codec ?? null,
  };
  worker.postMessage(init);
  const call = <T>(request: WorkerRequest): Promise<T> => {
    if (dead) return Promise.reject(dead);
    return new Promise<T>((resolve, reject) => {
      waiting.set(request.id, { resolve: resolve as (v: unknown) => void, reject });
      worker.postMessage(request);
    });
  };
  return {
    slots,
    fill: (slot, job) => call<FillResult>({ type: "fill", id: ids++, slot, job }),
    apply: (slot, length, at) => call<ApplyResult>({ type: "apply", id: ids++, slot, length, at }),
    [Symbol.dispose]() {
      failAll(new Error(`multifd worker of channel ${options.channel} was stopped`));
      worker.terminate();
    },
  };
};
