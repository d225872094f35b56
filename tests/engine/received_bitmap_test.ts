import assert from "node:assert/strict";
import { MigrationDigests, WRITTEN } from "../../engine/integrity.ts";
import {
  encodeReceived,
  entrySums,
  MIG_RP_MSG_FERRY_RECV_BITMAP,
  MIG_RP_MSG_FERRY_RECV_BITMAP_END,
  pagesToResend,
  ReceivedBitmapError,
  ReceivedBitmapReader,
} from "../../engine/received_bitmap.ts";
import { rng } from "../helpers/rng.ts";

/** Splits a return-path message into its type and payload. */
function parse(m: Uint8Array): [number, Uint8Array] {
  const v = new DataView(m.buffer, m.byteOffset, m.byteLength);
  assert.equal(v.getUint16(2), m.length - 4, "the length field covers the payload");
  return [v.getUint16(0), m.subarray(4)];
}

/** Digests of two blocks where a seeded share of pages were written. */
function digestsWith(seed: number, share: number): MigrationDigests {
  const r = rng(seed);
  const d = new MigrationDigests([{ name: "pc.ram", pages: 70_000 }, { name: "vga", pages: 37 }]);
  for (const { table } of d.ram) {
    for (let i = 0; i < table.units; i++) if (r() < share) table.set(i, (r() * 2 ** 32) >>> 0);
  }
  return d;
}

Deno.test("received bitmap: every held page and its entry arrive, in messages a be16 length can carry", () => {
  for (const [seed, share] of [[1, 0], [2, 0.3], [3, 1]] as const) {
    const dst = digestsWith(seed, share);
    const messages = encodeReceived(dst);
    assert.ok(messages.length > 1, "70,000 pages of entries need more than one message");
    const reader = new ReceivedBitmapReader([70_000, 37]);
    messages.forEach((m, i) => {
      assert.ok(m.length <= 4 + 0xffff);
      const [type, payload] = parse(m);
      const last = i === messages.length - 1;
      assert.equal(type, last ? MIG_RP_MSG_FERRY_RECV_BITMAP_END : MIG_RP_MSG_FERRY_RECV_BITMAP);
      assert.equal(reader.feed(type, payload), last);
    });
    const got = reader.result!;
    dst.ram.forEach(({ table }, b) => {
      assert.deepEqual(got[b].entries, table.digests, `block ${b}, share ${share}`);
      assert.equal(got[b].held, table.digests.filter((x) => x !== 0).length);
      assert.deepEqual(entrySums(got[b].entries), table.sums, "the sums match a DigestTable's");
    });
  }
});

Deno.test("received bitmap: the source sends again exactly the pages whose entries differ", () => {
  const src = digestsWith(4, 0.6);
  const dst = new MigrationDigests([{ name: "pc.ram", pages: 70_000 }, { name: "vga", pages: 37 }]);
  // The destination holds most pages as sent, some in an older version, lacks others.
  const r = rng(5);
  const expected = new Set<string>();
  let held = 0;
  src.ram.forEach(({ table }, b) => {
    for (let i = 0; i < table.units; i++) {
      const mine = table.digests[i];
      if (mine === 0) continue;
      const x = r();
      if (x < 0.8) {
        dst.ram[b].table.set(i, mine ^ WRITTEN);
        held++;
      } else if (x < 0.9) {
        dst.ram[b].table.set(i, mine ^ 0x5a5a ^ WRITTEN);
        expected.add(`${b}:${i}`);
      } else expected.add(`${b}:${i}`);
    }
  });
  const reader = new ReceivedBitmapReader([70_000, 37]);
  for (const m of encodeReceived(dst)) reader.feed(...parse(m));
  const plan = pagesToResend(src, reader.result!);
  assert.equal(plan.held, held);
  assert.equal(plan.resend, expected.size);
  assert.equal(plan.foreign, 0);
  const marked = new Set<string>();
  plan.maps.forEach((map, b) => {
    for (let i = 0; i < map.length * 32; i++) {
      if (map[i >>> 5] & (1 << (i & 31))) marked.add(`${b}:${i}`);
    }
  });
  assert.deepEqual(marked, expected);
});

Deno.test("received bitmap: a damaged, foreign or truncated bitmap is refused with a sentence", () => {
  const dst = digestsWith(6, 0.5);
  const messages = encodeReceived(dst).map(parse);
  // One flipped bit in an entry: the sums no longer add up.
  const damaged = messages.map(([t, p]) => [t, p.slice()] as [number, Uint8Array]);
  damaged[0][1][40] ^= 0x10;
  const reader = new ReceivedBitmapReader([70_000, 37]);
  assert.throws(
    () => damaged.forEach(([t, p]) => reader.feed(t, p)),
    (e: Error) =>
      e instanceof ReceivedBitmapError &&
      /do not add up to the sums the destination sent/.test(e.message),
  );
  // A guest of another shape.
  const other = new ReceivedBitmapReader([1000]);
  assert.throws(
    () => messages.forEach(([t, p]) => other.feed(t, p)),
    (e: Error) =>
      e instanceof ReceivedBitmapError &&
      /pages beyond block 0|block 1, this guest has 1/.test(e.message),
  );
  // A word cut short, and a message of another kind in the middle.
  const short = new ReceivedBitmapReader([70_000, 37]);
  assert.throws(
    () => short.feed(messages[0][0], messages[0][1].subarray(0, 11)),
    /a truncated word/,
  );
  assert.throws(() => new ReceivedBitmapReader([1]).feed(2, new Uint8Array(4)), /message type 0x2/);
});

Deno.test("received bitmap: pages the destination holds that the source never sent are counted as foreign", () => {
  const src = new MigrationDigests([{ name: "pc.ram", pages: 64 }]);
  const dst = new MigrationDigests([{ name: "pc.ram", pages: 64 }]);
  src.ram[0].table.set(1, 11);
  dst.ram[0].table.set(1, 11);
  dst.ram[0].table.set(40, 99); // never sent by this source
  dst.ram[0].table.set(41, 98);
  const reader = new ReceivedBitmapReader([64]);
  for (const m of encodeReceived(dst)) reader.feed(...parse(m));
  const plan = pagesToResend(src, reader.result!);
  assert.deepEqual([plan.held, plan.resend, plan.foreign], [1, 2, 2]);
});
