/**
 * The x86 machine against the real guest image. Tests that boot need
 * `deno task guest:image` first; without `.cache/guest/manifest.json` they are
 * ignored (and say so). Waits are on console output, each under a generous hang
 * guard; nothing here measures speed.
 */
import assert from "node:assert/strict";
import { VmError } from "../../../vm/error.ts";
import { ConsoleLog } from "../../../vm/x86/console_log.ts";
import {
  V86_VERSION,
  v86StateMemoryBytes,
  X86_MIN_MEMORY_BYTES,
  X86Machine,
} from "../../../vm/x86/emulator.ts";
import {
  GUEST_APPEND,
  GUEST_MEMORY_BYTES,
  guestImagePresent,
  readGuestImage,
} from "../../../vm/x86/guest_image.ts";
import { GUEST_PROMPT } from "../../../vm/x86/initramfs.ts";
import { parseTicks, tickChainError } from "../../../vm/x86/ticks.ts";
import { withTimeout } from "../../helpers/wait.ts";
import { BOOT_GUARD_MS, fortyTwo, LINES_GUARD_MS, QUESTION, ticksAtLeast } from "./_guest.ts";

const HAVE_IMAGE = guestImagePresent();
if (!HAVE_IMAGE) {
  console.log(
    "tests/vm/x86: no guest image (.cache/guest/manifest.json): run deno task guest:image",
  );
}
const NEEDS_IMAGE = " (needs deno task guest:image)";

/** Types the question and waits for the shell's answer. */
async function askFortyTwo(machine: X86Machine, log: ConsoleLog): Promise<void> {
  const from = log.text.length;
  machine.sendConsole(QUESTION);
  await fortyTwo(log, from);
}

Deno.test("X86Machine.create rejects a RAM size v86 would round, an empty image, an initrd alone", async () => {
  for (const memoryBytes of [X86_MIN_MEMORY_BYTES - (1 << 20), 100 * 1024 * 1024 + 4096, 0.5]) {
    await assert.rejects(
      X86Machine.create({ memoryBytes, bios: new Uint8Array() }),
      (e) => e instanceof VmError && e.code === "invalid-argument",
    );
  }
  await assert.rejects(
    X86Machine.create({ memoryBytes: X86_MIN_MEMORY_BYTES, bios: new Uint8Array() }),
    (e) =>
      e instanceof VmError && e.code === "invalid-argument" &&
      /bios image is empty/.test(e.message),
  );
  await assert.rejects(
    X86Machine.create({
      memoryBytes: X86_MIN_MEMORY_BYTES,
      bios: new Uint8Array(1),
      initrd: new Uint8Array(1),
    }),
    (e) => e instanceof VmError && /an initrd needs a kernel/.test(e.message),
  );
  assert.equal(V86_VERSION, "0.5.462");
});

Deno.test("v86StateMemoryBytes rejects bytes that are not a v86 state", () => {
  const header = (magic: number, version: number, length: number, info: number) => {
    const bytes = new Uint8Array(length);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, magic, true);
    view.setInt32(4, version, true);
    view.setInt32(8, length, true);
    view.setInt32(12, info, true);
    return bytes;
  };
  const invalid = (e: unknown) => e instanceof VmError && e.code === "invalid-device-state";
  assert.throws(() => v86StateMemoryBytes(new Uint8Array(8)), invalid);
  assert.throws(() => v86StateMemoryBytes(header(0x12345678, 6, 64, 8)), invalid);
  assert.throws(() => v86StateMemoryBytes(header(0x86768676, 5, 64, 8)), /format version 5/);
  assert.throws(() => v86StateMemoryBytes(header(0x86768676, 6, 64, 100)), /info block length/);
  const json = new TextEncoder().encode('{"state":[134217728]}');
  const good = header(0x86768676, 6, 16 + json.length, json.length);
  good.set(json, 16);
  assert.equal(v86StateMemoryBytes(good), 134217728);
  const notJson = good.slice();
  notJson[16] = 0x20;
  notJson[17] = 0x7b;
  assert.throws(() => v86StateMemoryBytes(notJson), invalid);
});

Deno.test({
  name: "X86Machine: device state without RAM loads only into a machine of the same RAM size" +
    NEEDS_IMAGE,
  ignore: !HAVE_IMAGE,
  async fn() {
    const { bios } = await readGuestImage();
    await using small = await X86Machine.create({ memoryBytes: 64 << 20, bios, start: false });
    await using big = await X86Machine.create({ memoryBytes: 128 << 20, bios, start: false });
    assert.equal(small.running, false);
    assert.equal(small.ram().length, 64 << 20);
    const state = await small.saveDevices();
    assert.equal(v86StateMemoryBytes(state), 64 << 20);
    // No RAM inside: far smaller than the 64 MiB of RAM it describes.
    assert.ok(state.length < 8 << 20, `${state.length} bytes`);
    assert.throws(
      () => big.loadDevices(state),
      (e) =>
        e instanceof VmError && e.code === "invalid-device-state" && /67108864/.test(e.message),
    );
    assert.throws(
      () => small.loadDevices(state, new Uint8Array(4096)),
      (e) => e instanceof VmError && e.code === "invalid-argument",
    );
    await small.destroy();
    assert.throws(() => small.ram(), (e) => e instanceof VmError && e.code === "closed");
  },
});

Deno.test({
  name: "X86Machine: the guest boots and ticks, answers on its console, and continues on a " +
    "second machine from its device state and RAM" + NEEDS_IMAGE,
  ignore: !HAVE_IMAGE,
  async fn(t) {
    const image = await readGuestImage();
    const logA = new ConsoleLog();
    const logB = new ConsoleLog();
    let a: X86Machine | undefined;
    let b: X86Machine | undefined;
    try {
      a = await X86Machine.create({
        memoryBytes: GUEST_MEMORY_BYTES,
        bios: image.bios,
        kernel: image.kernel,
        initrd: image.initrd,
        append: GUEST_APPEND,
      });
      a.onConsole(logA.push);
      const machineA = a;

      await t.step("boots to the first tick, and the chain holds over 10 ticks", async () => {
        await withTimeout(ticksAtLeast(logA, 1), BOOT_GUARD_MS, "the first tick line");
        const ticks = await withTimeout(ticksAtLeast(logA, 11), LINES_GUARD_MS, "10 more ticks");
        assert.equal(ticks[0].n, 1);
        assert.equal(tickChainError(ticks), null);
      });

      await t.step("echo $((6*7)) on the console answers 42", async () => {
        await withTimeout(
          logA.waitFor((text) => text.includes(GUEST_PROMPT)),
          LINES_GUARD_MS,
          "the shell prompt",
        );
        await askFortyTwo(machineA, logA);
      });

      let devices: Uint8Array = new Uint8Array();
      let ram: Uint8Array = new Uint8Array();
      await t.step("stopped, it gives its device state and RAM", async () => {
        await machineA.stop();
        assert.equal(machineA.running, false);
        await assert.rejects(
          (async () => {
            await machineA.run();
            await machineA.saveDevices();
          })(),
          (e) => e instanceof VmError && e.code === "invalid-run-state",
        );
        await machineA.stop();
        devices = await machineA.saveDevices();
        ram = machineA.ram().slice();
        assert.equal(ram.length, GUEST_MEMORY_BYTES);
        assert.equal(v86StateMemoryBytes(devices), GUEST_MEMORY_BYTES);
        await machineA.destroy();
      });

      await t.step("a second machine continues the tick chain and answers 42", async () => {
        const machineB = b = await X86Machine.create({
          memoryBytes: GUEST_MEMORY_BYTES,
          bios: image.bios,
          start: false,
        });
        machineB.onConsole(logB.push);
        machineB.loadDevices(devices, ram);
        assert.deepEqual(machineB.ram().subarray(0, 1 << 20), ram.subarray(0, 1 << 20));
        await machineB.run();
        assert.equal(machineB.running, true);
        const before = parseTicks(logA.text);
        await withTimeout(ticksAtLeast(logB, 3), LINES_GUARD_MS, "ticks on the second machine");
        await askFortyTwo(machineB, logB);
        // A's output and B's, read as one console: one chain from tick 1, no gap, no reset.
        const all = parseTicks(logA.text + logB.text);
        assert.equal(all[0].n, 1);
        assert.equal(tickChainError(all), null);
        assert.ok(all.length >= before.length + 3);
        assert.ok(parseTicks(logB.text).every((tick) => tick.n > before.at(-1)!.n));
      });
    } finally {
      await a?.destroy();
      await b?.destroy();
    }
  },
});
