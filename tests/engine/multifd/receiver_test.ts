/**
 * The destination's multifd channels with fake channels (in-process pairs) and
 * packets built by hand, applied on the calling thread: sync points keep a
 * later version of a page, on another channel, from landing before an earlier
 * one; a damaged or cut channel fails the receiver; strangers are dropped.
 */
import assert from "node:assert/strict";
import { channelPair, type MemoryChannel } from "../../../transports/memory.ts";
import { RamBlock } from "../../../vm/ram.ts";
import { FakeClock } from "../../helpers/fake_clock.ts";
import { MultifdReceiver } from "../../../engine/multifd/receiver.ts";
import { inlineRunner } from "../../../engine/multifd/runner.ts";
import { fillPacket } from "../../../engine/multifd/pages.ts";
import { encodeHello, SLOT_BYTES, syncPacket } from "../../../engine/multifd/packet.ts";
import { sharedKernels } from "../../../engine/wasm/kernels.ts";
import { DigestTable, MigrationDigests } from "../../../engine/integrity.ts";

const PAGE = 4096;
const session = crypto.getRandomValues(new Uint8Array(16));

/** A packet of `pages` of `block` as it holds them now. */
function packet(block: RamBlock, pages: number[], seq: number, sync: number): Uint8Array {
  const slot = new Uint8Array(new SharedArrayBuffer(SLOT_BYTES));
  const r = fillPacket(
    [block],
    slot,
    { block: 0, pages: Int32Array.from(pages), seq, sync },
    sharedKernels(),
    null,
  );
  return slot.slice(0, r.length);
}

function setPage(block: RamBlock, page: number, value: number) {
  block.bytes.fill(value, page * PAGE, (page + 1) * PAGE);
  block.markTouched(page);
}

/** A receiver of `count` channels into a fresh block, and the source ends of its channels. */
function setup(count: number) {
  const dst = new RamBlock("pc.ram", 8 * PAGE);
  const errors: Error[] = [];
  const dropped: string[] = [];
  const digests = new MigrationDigests([dst]);
  const receiver = new MultifdReceiver({
    count,
    blocks: [dst],
    codec: null,
    clock: new FakeClock(),
    deadlineMs: 5000,
    runner: inlineRunner,
    onError: (e) => errors.push(e),
    onDropped: (_peer, why) => dropped.push(why),
  });
  receiver.open(count, session, digests, 0);
  const ends: MemoryChannel[] = [];
  for (let i = 0; i < count; i++) {
    const [a, b] = channelPair(1 << 22);
    receiver.offer(b);
    ends.push(a);
  }
  return { dst, receiver, ends, errors, dropped, digests };
}

/** Lets queued promise jobs and I/O callbacks run (no time passes on any clock). */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 0));
}

Deno.test("multifd receiver: a page's later version on another channel lands after the earlier one", async () => {
  const src = new RamBlock("pc.ram", 8 * PAGE);
  const { dst, receiver, ends, digests } = setup(2);
  try {
    // Pass 1: page 3 goes as v1 over channel 0. Pass 2 (after sync point 1): v2 over channel 1.
    setPage(src, 3, 0x11);
    const v1 = packet(src, [3, 4], 0, 0);
    setPage(src, 3, 0x22);
    const v2 = packet(src, [3], 1, 1);
    await ends[0].write(encodeHello({ session, index: 0, count: 2 }));
    await ends[1].write(encodeHello({ session, index: 1, count: 2 }));
    // Channel 1 is fast: its sync point and v2 arrive before channel 0 sent anything.
    await ends[1].write(syncPacket(0, 1));
    await ends[1].write(v2);
    let flushed = false;
    const flush = receiver.flush(100).then(() => (flushed = true));
    await settle();
    assert.equal(flushed, false, "sync point 1 waits for channel 0");
    assert.equal(dst.bytes[3 * PAGE], 0, "v2 is not applied before sync point 1 passed");
    await ends[0].write(v1);
    await ends[0].write(syncPacket(1, 1));
    await flush;
    // Sync point 2 (every channel flushed once more): both versions were applied in order.
    await ends[0].write(syncPacket(2, 2));
    await ends[1].write(syncPacket(2, 2));
    await receiver.flush(200);
    assert.equal(dst.bytes[3 * PAGE], 0x22, "the later version wins");
    assert.equal(dst.bytes[4 * PAGE], 0);
    assert.equal(receiver.stats.packets, 2);
    // The integrity tables hold the last version's digest.
    const expected = new DigestTable(8);
    expected.set(3, sharedKernels().digest(src.bytes, 3 * PAGE, PAGE));
    expected.set(4, 0);
    assert.deepEqual(digests.ram[0].table.digests, expected.digests);
  } finally {
    receiver.close();
  }
});

Deno.test("multifd receiver: a damaged packet fails it, and the next FLUSH says why", async () => {
  const src = new RamBlock("pc.ram", 8 * PAGE);
  const { dst, receiver, ends, errors } = setup(2);
  try {
    setPage(src, 2, 0x33);
    const p = packet(src, [2], 0, 0);
    p[p.length - 7] ^= 0x40;
    await ends[0].write(encodeHello({ session, index: 0, count: 2 }));
    await ends[1].write(encodeHello({ session, index: 1, count: 2 }));
    await ends[0].write(p);
    await assert.rejects(receiver.flush(50), /multifd channel 0 at byte 0x1c: .*damaged/);
    assert.equal(errors.length, 1);
    assert.equal(dst.bytes[2 * PAGE], 0, "nothing of the damaged packet was written");
  } finally {
    receiver.close();
  }
});

Deno.test("multifd receiver: a channel cut inside a packet, or before its sync point, fails the FLUSH", async () => {
  const src = new RamBlock("pc.ram", 8 * PAGE);
  setPage(src, 1, 0x44);
  {
    const { receiver, ends, errors } = setup(2);
    await ends[0].write(encodeHello({ session, index: 0, count: 2 }));
    await ends[1].write(encodeHello({ session, index: 1, count: 2 }));
    await ends[1].write(packet(src, [1], 0, 0).subarray(0, 100));
    ends[1].close();
    await assert.rejects(receiver.flush(0), /multifd channel 1 .*ended 100 bytes into a packet/);
    assert.equal(errors.length, 1);
    receiver.close();
  }
  {
    const { receiver, ends } = setup(2);
    await ends[0].write(encodeHello({ session, index: 0, count: 2 }));
    await ends[1].write(encodeHello({ session, index: 1, count: 2 }));
    await ends[0].write(syncPacket(0, 1));
    await ends[1].finish();
    await assert.rejects(receiver.flush(0), /channel 1 .*ended before sync point 1/);
    receiver.close();
  }
});

Deno.test("multifd receiver: hellos of another migration, a taken index or garbage are dropped; the right ones are taken", async () => {
  const { receiver, ends, dropped } = setup(2);
  try {
    const [stranger, strangerEnd] = channelPair();
    receiver.offer(strangerEnd);
    await stranger.write(encodeHello({ session: new Uint8Array(16), index: 0, count: 2 }));
    const [garbage, garbageEnd] = channelPair();
    receiver.offer(garbageEnd);
    await garbage.write(new Uint8Array(28).fill(0x47));
    await ends[0].write(encodeHello({ session, index: 0, count: 2 }));
    const [twice, twiceEnd] = channelPair();
    receiver.offer(twiceEnd);
    await twice.write(encodeHello({ session, index: 0, count: 2 }));
    await settle();
    assert.deepEqual(dropped.sort(), [
      "channel 0 is connected already",
      "sent a hello for another migration",
      "sent no multifd hello (magic 0x47474747)",
    ]);
    // The rightful channels still carry a migration to its sync point.
    await ends[1].write(encodeHello({ session, index: 1, count: 2 }));
    await ends[0].write(syncPacket(0, 1));
    await ends[1].write(syncPacket(0, 1));
    await receiver.flush(0);
    for (const c of [stranger, garbage, twice]) c.close();
  } finally {
    receiver.close();
  }
});

Deno.test("multifd receiver: a source with another channel count is refused by name", () => {
  const receiver = new MultifdReceiver({
    count: 4,
    blocks: [new RamBlock("pc.ram", PAGE)],
    codec: null,
    clock: new FakeClock(),
    deadlineMs: 5000,
    runner: inlineRunner,
  });
  assert.throws(
    () => receiver.open(2, session, undefined, 0x60),
    /byte 0x60: the source sends pages over 2 multifd channels, this destination's multifd_channels is 4/,
  );
  receiver.close();
});

Deno.test("multifd receiver: channels that carry more pages than the budget are cut before applying them", async () => {
  const src = new RamBlock("pc.ram", 8 * PAGE);
  setPage(src, 1, 0x55);
  const dst = new RamBlock("pc.ram", 8 * PAGE);
  const receiver = new MultifdReceiver({
    count: 1,
    blocks: [dst],
    codec: null,
    clock: new FakeClock(),
    deadlineMs: 5000,
    runner: inlineRunner,
    maxPages: 3,
  });
  try {
    receiver.open(1, session, undefined, 0);
    const [a, b] = channelPair(1 << 22);
    receiver.offer(b);
    await a.write(encodeHello({ session, index: 0, count: 1 }));
    await a.write(packet(src, [0, 1], 0, 0));
    await a.write(packet(src, [1, 2], 1, 0));
    await assert.rejects(receiver.flush(0), /carried 4 pages .*at most 3, incoming_page_budget/);
    a.close();
  } finally {
    receiver.close();
  }
});
