/**
 * The source's multifd channels over fake channels into a receiver, applied on
 * the calling thread: pages queued across sync points arrive whole, the two
 * ends' digest tables agree (the integrity record covers every channel), and a
 * channel that fails fails the sender once, naming it.
 */
import assert from "node:assert/strict";
import { channelPair } from "../../../transports/memory.ts";
import type { Channel } from "../../../transports/transport.ts";
import { RamBlock } from "../../../vm/ram.ts";
import { FakeClock } from "../../helpers/fake_clock.ts";
import { MultifdReceiver } from "../../../engine/multifd/receiver.ts";
import { MultifdSender } from "../../../engine/multifd/sender.ts";
import { inlineRunner } from "../../../engine/multifd/runner.ts";
import { MigrationDigests } from "../../../engine/integrity.ts";

const PAGE = 4096;
const PAGES = 300;

function pair(count: number) {
  const src = new RamBlock("pc.ram", PAGES * PAGE);
  const dst = new RamBlock("pc.ram", PAGES * PAGE);
  for (let p = 0; p < PAGES; p += 2) {
    src.bytes.fill((p & 0xff) | 1, p * PAGE, p * PAGE + 100);
    src.markTouched(p);
  }
  const srcDigests = new MigrationDigests([src]);
  const dstDigests = new MigrationDigests([dst]);
  const errors: Error[] = [];
  const sender = new MultifdSender(count, {
    blocks: [src],
    tables: [srcDigests.ram[0].table],
    runner: inlineRunner,
    onError: (e) => errors.push(e),
  });
  const receiver = new MultifdReceiver({
    count,
    blocks: [dst],
    codec: null,
    clock: new FakeClock(),
    deadlineMs: 5000,
    runner: inlineRunner,
  });
  receiver.open(count, sender.session, dstDigests, 0);
  const srcEnds: Channel[] = [];
  const dstEnds: Channel[] = [];
  for (let i = 0; i < count; i++) {
    const [a, b] = channelPair(1 << 20);
    srcEnds.push(a);
    dstEnds.push(b);
    receiver.offer(b);
  }
  return { src, dst, sender, receiver, srcEnds, dstEnds, srcDigests, dstDigests, errors };
}

Deno.test("multifd sender: pages over 3 channels across sync points arrive whole, digests agree", async () => {
  const t = pair(3);
  try {
    await t.sender.start(t.srcEnds);
    const all = Int32Array.from({ length: PAGES }, (_, i) => i);
    for (let i = 0; i < PAGES; i += 128) await t.sender.queue(0, all.subarray(i, i + 128));
    await t.sender.barrier();
    await t.receiver.flush(0);
    // A second pass changes pages the first one sent; the sync point keeps them in order.
    for (let p = 0; p < PAGES; p += 7) {
      t.src.bytes.fill(0xa5, p * PAGE, (p + 1) * PAGE);
      t.src.markTouched(p);
    }
    const again = Int32Array.from({ length: Math.ceil(PAGES / 7) }, (_, i) => i * 7);
    await t.sender.queue(0, again);
    await t.sender.barrier();
    await t.receiver.flush(1);
    assert.deepEqual(t.dst.bytes, t.src.bytes);
    assert.deepEqual(t.dstDigests.ram[0].table.digests, t.srcDigests.ram[0].table.digests);
    assert.equal(t.sender.stats.syncs, 2);
    assert.equal(t.sender.stats.normal, Math.ceil(PAGES / 2) + again.length);
    assert.equal(t.receiver.stats.packets, t.sender.stats.packets);
    assert.deepEqual(t.errors, []);
  } finally {
    t.sender.close();
    t.receiver.close();
  }
});

Deno.test("multifd sender: a channel whose peer is gone fails the sender once, naming the channel", async () => {
  const t = pair(2);
  try {
    await t.sender.start(t.srcEnds);
    t.dstEnds[1].close();
    const all = Int32Array.from({ length: 128 }, (_, i) => i);
    await assert.rejects(async () => {
      for (let i = 0; i < 50; i++) await t.sender.queue(0, all);
      await t.sender.barrier();
    }, /multifd channel 1 failed/);
    assert.equal(t.errors.length, 1);
    assert.match(t.errors[0].message, /multifd channel 1 failed/);
    await assert.rejects(t.sender.queue(0, all), /multifd channel 1 failed/);
  } finally {
    t.sender.close();
    t.receiver.close();
  }
});

Deno.test("multifd sender: closed (a cancel), it refuses more work without reporting a failure", async () => {
  const t = pair(2);
  await t.sender.start(t.srcEnds);
  t.sender.close();
  await assert.rejects(t.sender.queue(0, Int32Array.of(1)), /multifd channels closed/);
  assert.deepEqual(t.errors, []);
  assert.ok(t.srcEnds.every((c) => c.closed));
  t.receiver.close();
});
