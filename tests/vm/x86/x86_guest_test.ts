/**
 * The x86 guest behind the engine's Guest interface, in-process (two engines over
 * memory transports): it boots and answers on its console; its RAM copy follows
 * the emulator exactly (a sync finds what changed, a sync of a stopped guest finds
 * nothing more); and it migrates live while the guest writes memory, with RAM
 * equal on both ends and the console's tick chain carrying on at the destination.
 * Needs `deno task guest:image`; waits are on console output under hang guards.
 */
import assert from "node:assert/strict";
import { Engine } from "../../../engine/engine.ts";
import { x86Sections } from "../../../engine/sections/registry.ts";
import { MemoryTransports } from "../../../transports/memory.ts";
import { VmError } from "../../../vm/error.ts";
import { ConsoleLog } from "../../../vm/x86/console_log.ts";
import { GUEST_APPEND, guestImagePresent, readGuestImage } from "../../../vm/x86/guest_image.ts";
import { GUEST_PROMPT } from "../../../vm/x86/initramfs.ts";
import { parseTicks, tickChainError } from "../../../vm/x86/ticks.ts";
import { X86Guest } from "../../../vm/x86/x86_guest.ts";
import { withTimeout } from "../../helpers/wait.ts";
import { BOOT_GUARD_MS, fortyTwo, LINES_GUARD_MS, QUESTION, ticksAtLeast } from "./_guest.ts";

const HAVE_IMAGE = guestImagePresent();
const NEEDS_IMAGE = " (needs deno task guest:image)";
const RAM = 128 << 20;

/** A ConsoleLog fed by the guest's console from now on. */
function follow(guest: X86Guest): { log: ConsoleLog; stop: () => void } {
  const log = new ConsoleLog();
  log.append(guest.console.tail().bytes);
  const stop = guest.console.subscribe((bytes) => log.append(bytes));
  return { log, stop };
}

Deno.test("X86Guest.create refuses RAM v86 cannot give exactly, or too little for the initrd", async () => {
  for (const ramSize of [32 << 20, (100 << 20) + 4096, 2048 << 20]) {
    await assert.rejects(
      X86Guest.create({ ramSize, bios: new Uint8Array(1) }),
      (e) => e instanceof VmError && e.code === "invalid-argument" && /whole MiB/.test(e.message),
    );
  }
  await assert.rejects(
    X86Guest.create({
      ramSize: 65 << 20,
      bios: new Uint8Array(1),
      kernel: new Uint8Array(1),
      initrd: new Uint8Array((1 << 20) + 1),
    }),
    (e) => e instanceof VmError && /initrd at 64 MiB: .* needs more than 66 MiB/.test(e.message),
  );
});

Deno.test({
  name: "X86Guest boots, its RAM copy follows the emulator exactly, and it migrates live " +
    "while writing memory: RAM equal, the console carries on" + NEEDS_IMAGE,
  ignore: !HAVE_IMAGE,
  async fn(t) {
    const image = await readGuestImage();
    await using source = await X86Guest.create({
      ramSize: RAM,
      bios: image.bios,
      kernel: image.kernel,
      initrd: image.initrd,
      append: GUEST_APPEND,
    });
    await using target = await X86Guest.create({ ramSize: RAM, bios: image.bios });
    const src = follow(source);
    const transports = new MemoryTransports();
    const srcEngine = new Engine({ guest: source, transports, sections: x86Sections() });
    const dstEngine = new Engine({
      guest: target,
      transports,
      sections: x86Sections(),
      autostart: false,
    });
    try {
      await t.step("boots to its ticks and a shell that answers 42", async () => {
        assert.deepEqual(source.info(), {
          guest: "x86",
          run_state: "prelaunch",
          ram_size: RAM,
          page_size: 4096,
          workload: "linux",
          throttle: 0,
          ops: null,
        });
        source.start();
        await withTimeout(ticksAtLeast(src.log, 3), BOOT_GUARD_MS, "three ticks");
        await withTimeout(
          src.log.waitFor((text) => text.includes(GUEST_PROMPT)),
          LINES_GUARD_MS,
          "the shell prompt",
        );
        const from = src.log.text.length;
        source.sendConsole(QUESTION);
        await fortyTwo(src.log, from);
      });

      await t.step("a sync copies what changed; once stopped, a second sync finds nothing", () => {
        const block = source.blocks[0];
        const map = new Uint32Array(Math.ceil(block.pages / 32));
        assert.ok(block.syncDirty(map) > 0, "a booted guest has written pages");
        source.stop("paused");
        block.syncDirty(map);
        map.fill(0);
        assert.equal(block.syncDirty(map), 0, "a stopped guest changes nothing");
        assert.throws(() => source.sendConsole("x"), /needs it running/);
        source.start();
      });

      await t.step(
        "migrates while dd writes 24 MiB of /dev/shm: RAM equal at switchover",
        async () => {
          await dstEngine.listenIncoming("tcp:dst:1");
          const from = src.log.text.length;
          source.sendConsole("dd if=/dev/urandom of=/dev/shm/fill bs=1M count=24; echo dd-done\n");
          // Pre-copy at 32 MiB/s, so the guest goes on writing while pages move.
          srcEngine.setParameters({ max_bandwidth: 32 << 20, downtime_limit: 300 });
          srcEngine.migrate("tcp:dst:1");
          await srcEngine.migration!.done;
          await dstEngine.incoming!.done;
          assert.equal(srcEngine.current().status, "completed", srcEngine.current().error_desc);
          assert.equal(dstEngine.incomingInfo().status, "completed");
          assert.equal(source.runState, "postmigrate");
          assert.equal(target.runState, "paused");
          // Both digests read the emulators' own memory (a sync first): equal byte for byte.
          assert.equal((await target.digest()).sha256, (await source.digest()).sha256);
          assert.ok(src.log.text.length > from, "the guest ran during the migration");
        },
      );

      await t.step("the destination carries the console on: same chain, then 42", async () => {
        const dst = follow(target);
        const before = parseTicks(src.log.text);
        target.start();
        const last = before.at(-1)!.n;
        await withTimeout(
          dst.log.waitFor((text) => parseTicks(text).some((tick) => tick.n >= last + 3)),
          LINES_GUARD_MS,
          "three more ticks",
        );
        const ticks = parseTicks(dst.log.text);
        assert.equal(tickChainError(ticks), null);
        assert.ok(ticks.at(-1)!.n > before.at(-1)!.n);
        const from = dst.log.text.length;
        target.sendConsole(QUESTION);
        await fortyTwo(dst.log, from);
        dst.stop();
      });
    } finally {
      src.stop();
      await srcEngine.close();
      await dstEngine.close();
    }
  },
});
