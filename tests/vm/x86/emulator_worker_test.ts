/**
 * The x86 machine inside Workers: one boots the guest, its device state and RAM
 * come out through postMessage, and a machine in a second Worker continues the
 * guest. Needs `deno task guest:image`; ignored without the image.
 */
import assert from "node:assert/strict";
import { ConsoleLog } from "../../../vm/x86/console_log.ts";
import {
  GUEST_APPEND,
  GUEST_MEMORY_BYTES,
  guestImagePresent,
  readGuestImage,
} from "../../../vm/x86/guest_image.ts";
import { parseTicks, tickChainError } from "../../../vm/x86/ticks.ts";
import { withTimeout } from "../../helpers/wait.ts";
import type { FromWorker, ToWorker } from "./_machine_worker.ts";
import { BOOT_GUARD_MS, fortyTwo, LINES_GUARD_MS, QUESTION, ticksAtLeast } from "./_guest.ts";

/** A Worker running one machine, with its console kept in a {@link ConsoleLog}. */
class MachineWorker {
  readonly log = new ConsoleLog();
  readonly #worker = new Worker(new URL("./_machine_worker.ts", import.meta.url), {
    type: "module",
  });
  #replies: ((message: FromWorker) => void)[] = [];

  constructor() {
    this.#worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const message = event.data;
      if (message.type === "console") this.log.append(message.bytes);
      else this.#replies.shift()?.(message);
    };
  }

  /** Sends `message` and resolves with the worker's reply (an error reply rejects). */
  request(message: ToWorker, transfer: Transferable[] = []): Promise<FromWorker> {
    const reply = new Promise<FromWorker>((resolve, reject) => {
      this.#replies.push((m) => m.type === "error" ? reject(new Error(m.message)) : resolve(m));
    });
    this.#worker.postMessage(message, transfer);
    return reply;
  }

  send(text: string): void {
    this.#worker.postMessage({ type: "send", text } satisfies ToWorker);
  }

  async close(): Promise<void> {
    await withTimeout(this.request({ type: "destroy" }), LINES_GUARD_MS, "the worker's destroy");
    this.#worker.terminate();
  }
}

Deno.test({
  name: "X86Machine in Workers: RAM and device state leave one Worker by postMessage and the " +
    "guest goes on in another (needs deno task guest:image)",
  ignore: !guestImagePresent(),
  async fn() {
    const image = await readGuestImage();
    const options = { memoryBytes: GUEST_MEMORY_BYTES, bios: image.bios };
    const a = new MachineWorker();
    const b = new MachineWorker();
    try {
      await a.request({
        type: "boot",
        options: { ...options, kernel: image.kernel, initrd: image.initrd, append: GUEST_APPEND },
      });
      await withTimeout(ticksAtLeast(a.log, 3), BOOT_GUARD_MS, "ticks in worker A");
      const saved = await withTimeout(a.request({ type: "save" }), LINES_GUARD_MS, "A's save");
      assert.equal(saved.type, "saved");
      if (saved.type !== "saved") return;
      assert.equal(saved.ram.length, GUEST_MEMORY_BYTES);
      const lastA = parseTicks(a.log.text).at(-1)!;

      await b.request(
        { type: "load", options, devices: saved.devices, ram: saved.ram },
        [saved.devices.buffer, saved.ram.buffer],
      );
      await withTimeout(ticksAtLeast(b.log, 3), LINES_GUARD_MS, "ticks in worker B");
      const from = b.log.text.length;
      b.send(QUESTION);
      await fortyTwo(b.log, from);
      const all = parseTicks(a.log.text + b.log.text);
      assert.equal(all[0].n, 1);
      assert.equal(tickChainError(all), null);
      // B printed only what came after A's last line (A may have stopped mid-line).
      assert.ok(all.length >= parseTicks(a.log.text).length + 3);
      assert.ok(parseTicks(b.log.text).every((tick) => tick.n > lastA.n));
    } finally {
      await a.close();
      await b.close();
    }
  },
});
