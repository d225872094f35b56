import assert from "node:assert/strict";
import {
  decodeFixed,
  decodeHello,
  encodeHello,
  EntryKind,
  HELLO_BYTES,
  MAX_PACKET_PAGES,
  MultifdError,
  PACKET_FIXED,
  PacketFlag,
  putEntry,
  putPacketHeader,
  readEntry,
  SLOT_BYTES,
  syncPacket,
} from "../../../engine/multifd/packet.ts";

const session = Uint8Array.from({ length: 16 }, (_, i) => i * 7);

Deno.test("multifd hello: round trip, and every bad field named", () => {
  const bytes = encodeHello({ session, index: 2, count: 4 });
  assert.equal(bytes.length, HELLO_BYTES);
  assert.deepEqual(decodeHello(bytes), { session, index: 2, count: 4 });
  const bad = bytes.slice();
  bad[0] = 0x51;
  assert.match(decodeHello(bad) as string, /sent no multifd hello \(magic 0x51/);
  const version = bytes.slice();
  version[7] = 9;
  assert.match(decodeHello(version) as string, /multifd version 9, expected 1/);
  assert.match(
    decodeHello(encodeHello({ session, index: 4, count: 4 })) as string,
    /channel 4 of 4/,
  );
  assert.match(decodeHello(bytes.subarray(0, 10)) as string, /hello of 10 bytes/);
});

Deno.test("multifd packet: header and entries round trip (offsets beyond 4 GiB too)", () => {
  const buf = new Uint8Array(SLOT_BYTES);
  const name = new TextEncoder().encode("pc.ram");
  const table = putPacketHeader(buf, 0, {
    flags: PacketFlag.COMPRESSED,
    method: 1,
    count: 3,
    seq: 77,
    sync: 5,
    dataLength: 5000,
    check: 0xdeadbeef,
    name,
  });
  assert.equal(table, PACKET_FIXED + name.length);
  putEntry(buf, table, 0, 0, EntryKind.ZERO);
  putEntry(buf, table, 1, 5 * 2 ** 32 + 4096 * 3, EntryKind.PAGE);
  putEntry(buf, table, 2, 4096, EntryKind.PAGE);
  const { header, nameLength, total } = decodeFixed(buf, 0, 0);
  assert.deepEqual(header, {
    flags: PacketFlag.COMPRESSED,
    method: 1,
    count: 3,
    seq: 77,
    sync: 5,
    dataLength: 5000,
    check: 0xdeadbeef,
  });
  assert.equal(nameLength, 6);
  assert.equal(total, table + 3 * 8 + 5000);
  assert.deepEqual(readEntry(buf, table, 0), [0, EntryKind.ZERO]);
  assert.deepEqual(readEntry(buf, table, 1), [5 * 2 ** 32 + 4096 * 3, EntryKind.PAGE]);
  assert.deepEqual(readEntry(buf, table, 2), [4096, EntryKind.PAGE]);
});

Deno.test("multifd packet: a SYNC packet is the fixed header alone", () => {
  const sync = syncPacket(12, 3);
  assert.equal(sync.length, PACKET_FIXED);
  const { header, total } = decodeFixed(sync, 1, 0);
  assert.equal(header.flags, PacketFlag.SYNC);
  assert.equal(header.seq, 12);
  assert.equal(header.sync, 3);
  assert.equal(total, PACKET_FIXED);
});

/** A header with `patch` applied, decoded; the error's reason. */
function reasonFor(patch: Partial<Parameters<typeof putPacketHeader>[2]>, nameLength = 6): string {
  const buf = new Uint8Array(PACKET_FIXED + 255);
  putPacketHeader(buf, 0, {
    flags: 0,
    method: 0,
    count: 1,
    seq: 0,
    sync: 0,
    dataLength: 4096,
    check: 0,
    name: new Uint8Array(nameLength),
    ...patch,
  });
  try {
    decodeFixed(buf, 3, 0x40);
  } catch (e) {
    assert.ok(e instanceof MultifdError);
    assert.equal(e.channel, 3);
    assert.equal(e.offset, 0x40);
    assert.match(e.message, /^Invalid multifd channel 3 at byte 0x40: /);
    return e.reason;
  }
  return "accepted";
}

Deno.test("multifd packet: decodeFixed refuses what cannot be a packet, naming why", () => {
  assert.equal(reasonFor({}), "accepted");
  assert.match(reasonFor({ flags: 0x80 }), /unknown packet flags 0x80/);
  assert.match(reasonFor({ flags: PacketFlag.SYNC }), /SYNC packet that carries pages/);
  assert.match(reasonFor({ count: 0 }), /a packet of 0 pages/);
  assert.match(reasonFor({ count: MAX_PACKET_PAGES + 1 }), /a packet of 129 pages \(1 to 128\)/);
  assert.match(reasonFor({ dataLength: 4097 }), /4097 bytes of data for 1 pages/);
  assert.match(reasonFor({ method: 2 }), /a plain packet names method 2/);
  assert.match(reasonFor({}, 0), /without a block name/);
  const garbage = new Uint8Array(PACKET_FIXED).fill(0x41);
  assert.throws(() => decodeFixed(garbage, 0, 0), /bad packet magic 0x41414141/);
});
