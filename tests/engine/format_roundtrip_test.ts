import assert from "node:assert/strict";
import { Engine } from "../../engine/engine.ts";
import type { IncomingInfo, MigrationInfo } from "../../engine/contract.ts";
import type { Parameters } from "../../engine/params.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { withTimeout } from "../helpers/wait.ts";

interface Outcome {
  src: MigrationInfo;
  dst: IncomingInfo;
}

/**
 * Migrates `src` into `dst` over MemoryTransports through two Engines (the
 * engine's writer on one end, its reader on the other) and closes both engines.
 */
async function migrate(
  src: TestGuest,
  dst: TestGuest,
  opts: { autostart?: boolean; params?: Partial<Parameters>; during?: () => void } = {},
): Promise<Outcome> {
  const transports = new MemoryTransports();
  const dstEngine = new Engine({ guest: dst, transports, autostart: opts.autostart ?? true });
  const srcEngine = new Engine({ guest: src, transports });
  try {
    srcEngine.setParameters({ max_bandwidth: 1 << 30, ...opts.params });
    await dstEngine.listenIncoming("tcp:memory:4444");
    srcEngine.migrate("tcp:memory:4444");
    opts.during?.();
    await withTimeout(srcEngine.migration!.done, 30_000, "source migration end");
    await withTimeout(dstEngine.incoming!.done, 30_000, "destination load end");
    return { src: srcEngine.current(), dst: dstEngine.incomingInfo() };
  } finally {
    await srcEngine.close();
    await dstEngine.close();
  }
}

function assertCompleted(o: Outcome): void {
  assert.equal(o.src.status, "completed", o.src.error_desc);
  assert.equal(o.dst.status, "completed", o.dst.error_desc);
}

Deno.test("Engine migration round trip: random-filled guest arrives identical, destination paused without autostart", async () => {
  const src = new TestGuest([["pc.ram", 4 << 20]]);
  src.fillRandom(7);
  src.counter = 0xfeedfacecafen;
  src.start();
  const dst = new TestGuest([["pc.ram", 4 << 20]]);
  dst.fillRandom(8);
  const o = await migrate(src, dst, { autostart: false });
  assertCompleted(o);
  assert.equal(await ramDigest(dst), await ramDigest(src));
  assert.equal(dst.counter, 0xfeedfacecafen);
  assert.equal(src.runState, "postmigrate");
  assert.equal(dst.runState, "paused");
  assert.equal(o.src.ram!.normal, 1024);
  assert.equal(o.src.ram!.duplicate, 0);
  assert.equal(o.src.ram!.remaining, 0);
  assert.deepEqual(o.dst.pages, { zero: 0, normal: 1024 });
});

Deno.test("Engine migration round trip: sparse guest sends zero pages as ZERO and starts the destination with autostart", async () => {
  const src = new TestGuest([["pc.ram", 8 << 20]]);
  const pages = [0, 1, 77, 1000, 2047];
  for (const p of pages) src.write(p * PAGE_SIZE + 13, Uint8Array.of(p & 0xff || 1, 2, 3));
  src.counter = 5n;
  src.start();
  const dst = new TestGuest([["pc.ram", 8 << 20]]);
  dst.fillRandom(99); // everything the source never wrote must become zero
  const o = await migrate(src, dst);
  assertCompleted(o);
  assert.equal(await ramDigest(dst), await ramDigest(src));
  assert.equal(dst.counter, 5n);
  assert.equal(src.runState, "postmigrate");
  assert.equal(dst.runState, "running");
  assert.equal(o.src.ram!.normal, pages.length);
  assert.equal(o.src.ram!.duplicate, 2048 - pages.length);
  // Wire cost: 9 bytes per zero page after the first record, like QEMU.
  assert.ok(
    o.src.ram!.transferred < pages.length * 4200 + 2048 * 16,
    `${o.src.ram!.transferred} bytes`,
  );
  assert.deepEqual(o.dst.pages, { zero: 2048 - pages.length, normal: pages.length });
});

Deno.test("Engine migration round trip: two RAM blocks both arrive identical", async () => {
  const blocks: [string, number][] = [["pc.ram", 2 << 20], ["vga.vram", 256 << 10]];
  const src = new TestGuest(blocks);
  src.fillRandom(3);
  src.blocks[0].bytes.fill(0, 0, 1 << 20);
  src.blocks[1].bytes.fill(0, 64 << 10, 128 << 10);
  src.start();
  const dst = new TestGuest(blocks);
  dst.fillRandom(4);
  const o = await migrate(src, dst, { autostart: false });
  assertCompleted(o);
  assert.equal(await ramDigest(dst), await ramDigest(src));
  assert.equal(o.src.ram!.total, (2 << 20) + (256 << 10));
  assert.equal(dst.runState, "paused");
});

Deno.test("Engine migration round trip: a guest written to concurrently from a timer arrives as it was at switchover", async () => {
  const blocks: [string, number][] = [["pc.ram", 4 << 20], ["vga.vram", 1 << 20]];
  const src = new TestGuest(blocks);
  src.fillRandom(11);
  src.counter = 1n;
  src.start();
  const dst = new TestGuest(blocks);
  let writes = 0;
  let seed = 1;
  let timer: ReturnType<typeof setInterval> | undefined;
  const o = await migrate(src, dst, {
    autostart: true,
    // About 5 MiB at 16 MiB/s: several 100 ms windows for the timer to dirty pages.
    params: { max_bandwidth: 16 << 20, downtime_limit: 30 },
    during: () => {
      timer = setInterval(() => {
        if (src.runState !== "running") return; // a stopped vCPU does not write
        for (let i = 0; i < 8; i++) {
          seed = (seed * 1103515245 + 12345) >>> 0;
          const block = seed & 1;
          const page = (seed >>> 8) % src.blocks[block].pages;
          src.write(page * PAGE_SIZE + (seed % 4000), Uint8Array.of(seed & 0xff, 0xab), block);
          src.counter++;
          writes++;
        }
      }, 3);
    },
  });
  clearInterval(timer);
  assertCompleted(o);
  assert.ok(writes > 0, "the guest was written to during the migration");
  assert.ok(o.src.ram!.dirty_sync_count >= 2, "dirty log synced more than once");
  assert.equal(await ramDigest(dst), await ramDigest(src));
  assert.equal(dst.counter, src.counter);
  assert.equal(src.runState, "postmigrate");
  assert.equal(dst.runState, "running");
});
