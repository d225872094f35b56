/**
 * A multifd worker thread (docs/ARCHITECTURE.md, "Multifd"): rebuilds the guest's
 * RAM blocks from their shared buffers and fills (source) or applies
 * (destination) one packet per message, in the packet slots it was given.
 * @module
 */
/// <reference lib="deno.worker" />
import { RamBlock } from "../../vm/ram.ts";
import { sharedKernels } from "../wasm/kernels.ts";
import { applyPacket, fillPacket } from "./pages.ts";
import type { WorkerInit, WorkerReply, WorkerRequest } from "./runner.ts";

let blocks: RamBlock[] = [];
let init: WorkerInit | null = null;

self.onmessage = (event: MessageEvent<WorkerInit | WorkerRequest>) => {
  const msg = event.data;
  if (msg.type === "init") {
    init = msg;
    blocks = msg.blocks.map((b) => new RamBlock(b.name, b.shared.length, b.shared));
    return;
  }
  let reply: WorkerReply;
  try {
    const slot = init!.slots[msg.slot];
    if (msg.type === "fill") {
      reply = {
        id: msg.id,
        ok: true,
        result: fillPacket(blocks, slot, msg.job, sharedKernels(), init!.compression),
      };
    } else {
      reply = {
        id: msg.id,
        ok: true,
        result: applyPacket(
          blocks,
          slot,
          msg.length,
          init!.channel,
          msg.at,
          sharedKernels(),
          init!.codec,
        ),
      };
    }
  } catch (e) {
    const err = e as Error & { channel?: number; offset?: number; reason?: string };
    reply = {
      id: msg.id,
      ok: false,
      error: {
        name: err.name,
        message: err.message,
        ...(err.name === "MultifdError"
          ? { channel: err.channel!, offset: err.offset!, reason: err.reason! }
          : {}),
      },
    };
  }
  self.postMessage(reply);
};
