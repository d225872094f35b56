/**
 * A Worker hosting one X86Machine, for emulator_worker_test.ts: the host boots it or
 * loads it from device state and RAM, types on its console, and takes its device
 * state and a copy of its RAM through postMessage. Console bytes go out in batches.
 */
/// <reference lib="deno.worker" />
import { X86Machine, type X86MachineOptions } from "../../../vm/x86/emulator.ts";

/** What the host sends. */
export type ToWorker =
  | { type: "boot"; options: X86MachineOptions }
  | { type: "load"; options: X86MachineOptions; devices: Uint8Array; ram: Uint8Array }
  | { type: "send"; text: string }
  | { type: "save" }
  | { type: "destroy" };

/** What the worker sends back. */
export type FromWorker =
  | { type: "running" }
  | { type: "console"; bytes: Uint8Array }
  | { type: "saved"; devices: Uint8Array<ArrayBuffer>; ram: Uint8Array<ArrayBuffer> }
  | { type: "destroyed" }
  | { type: "error"; message: string };

let machine: X86Machine | undefined;
let pending: number[] = [];

function post(message: FromWorker, transfer: Transferable[] = []): void {
  self.postMessage(message, transfer);
}

function forwardConsole(m: X86Machine): void {
  m.onConsole((byte) => {
    if (pending.length === 0) {
      queueMicrotask(() => {
        const bytes = Uint8Array.from(pending);
        pending = [];
        post({ type: "console", bytes }, [bytes.buffer]);
      });
    }
    pending.push(byte);
  });
}

async function handle(message: ToWorker): Promise<void> {
  switch (message.type) {
    case "boot":
      machine = await X86Machine.create(message.options);
      forwardConsole(machine);
      post({ type: "running" });
      break;
    case "load":
      machine = await X86Machine.create({ ...message.options, start: false });
      forwardConsole(machine);
      machine.loadDevices(message.devices, message.ram);
      await machine.run();
      post({ type: "running" });
      break;
    case "send":
      machine!.sendConsole(message.text);
      break;
    case "save": {
      await machine!.stop();
      const devices = await machine!.saveDevices();
      const ram = machine!.ram().slice(); // wasm memory is this thread's alone: copy it out
      post({ type: "saved", devices, ram }, [devices.buffer, ram.buffer]);
      break;
    }
    case "destroy":
      await machine?.destroy();
      post({ type: "destroyed" });
      break;
  }
}

self.onmessage = (event: MessageEvent<ToWorker>) => {
  handle(event.data).catch((e) => post({ type: "error", message: String(e) }));
};
