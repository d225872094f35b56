import assert from "node:assert/strict";
import { READ_BUFFER_SIZE, StreamError, StreamReader } from "../../../engine/format/reader.ts";
import { BytesChannel } from "../../helpers/byte_channels.ts";

/** u8 0xab, be16 0x0102, be32 0xdeadbeef, be64 0x0123456789abcdef, str8 "pc.ram", 10 raw bytes. */
const SAMPLE = Uint8Array.from([
  0xab,
  0x01,
  0x02,
  0xde,
  0xad,
  0xbe,
  0xef,
  0x01,
  0x23,
  0x45,
  0x67,
  0x89,
  0xab,
  0xcd,
  0xef,
  0x06,
  ...new TextEncoder().encode("pc.ram"),
  ...Array.from({ length: 10 }, (_, i) => 0xf0 + i),
]);

async function readSample(r: StreamReader): Promise<void> {
  await r.need(1);
  assert.equal(r.offset, 0);
  assert.equal(r.u8(), 0xab);
  await r.need(2);
  assert.equal(r.be16(), 0x0102);
  await r.need(4);
  assert.equal(r.be32(), 0xdeadbeef);
  assert.equal(r.offset, 7);
  await r.need(8);
  assert.deepEqual(r.be64Parts(), [0x01234567, 0x89abcdef]);
  assert.equal(await r.str8(), "pc.ram");
  assert.equal(r.offset, 22);
  await r.need(10);
  assert.deepEqual([...r.take(10)], Array.from({ length: 10 }, (_, i) => 0xf0 + i));
  assert.equal(r.offset, SAMPLE.length);
  assert.equal(r.received, SAMPLE.length);
  assert.equal(await r.atEnd(), true);
}

Deno.test("StreamReader accessors decode big-endian fields from one large chunk", async () => {
  await readSample(new StreamReader(new BytesChannel(SAMPLE), 64));
});

Deno.test("StreamReader.need() assembles fields across chunk boundaries when the channel gives 1 byte per read", async () => {
  const ch = new BytesChannel(SAMPLE, 1);
  await readSample(new StreamReader(ch, 64));
  assert.ok(ch.reads >= SAMPLE.length, "every byte came from its own read");
});

Deno.test("StreamReader.need() compacts a small buffer so fields straddling its end still decode", async () => {
  // A 10-byte buffer forces the reader to move unread bytes to the front repeatedly.
  await readSample(new StreamReader(new BytesChannel(SAMPLE, 1), 10));
  await readSample(new StreamReader(new BytesChannel(SAMPLE, 3), 10));
  await readSample(new StreamReader(new BytesChannel(SAMPLE, 7), 10));
});

Deno.test("StreamReader.offset stays absolute across many buffer refills", async () => {
  const data = Uint8Array.from({ length: 5000 }, (_, i) => i & 0xff);
  const r = new StreamReader(new BytesChannel(data, 13), 32);
  for (let i = 0; i < data.length; i += 4) {
    await r.need(4);
    assert.equal(r.offset, i);
    const v = r.be32();
    assert.equal(v >>> 24, i & 0xff);
  }
  assert.equal(r.offset, 5000);
});

Deno.test("StreamReader.need() on a truncated stream throws StreamError naming the offset", async () => {
  const r = new StreamReader(new BytesChannel(Uint8Array.from([0, 0, 0, 1, 9, 9]), 1), 16);
  await r.need(4);
  assert.equal(r.be32(), 1);
  const err = await r.need(4).then(() => null, (e) => e);
  assert.ok(err instanceof StreamError, `expected StreamError, got ${err}`);
  assert.equal(err.offset, 4);
  assert.match(err.reason, /truncated: needed 4 bytes, only 2 arrived/);
  assert.equal(err.message, `Invalid migration stream at byte 0x4: ${err.reason}`);
  assert.equal(err.name, "StreamError");
  // The buffered bytes are still there and a later need keeps failing the same way.
  await r.need(2);
  assert.equal(r.be16(), 0x0909);
  await assert.rejects(r.need(1), (e) => e instanceof StreamError && e.offset === 6);
});

Deno.test("StreamReader.need() on an empty stream throws StreamError at offset 0", async () => {
  const r = new StreamReader(new BytesChannel(new Uint8Array(0)), 16);
  await assert.rejects(
    r.need(8),
    (e) => e instanceof StreamError && e.offset === 0 && /truncated/.test(e.message),
  );
});

Deno.test("StreamReader.need() larger than the buffer throws RangeError, not a stream error", async () => {
  const r = new StreamReader(new BytesChannel(new Uint8Array(100)), 16);
  await assert.rejects(r.need(17), RangeError);
});

Deno.test("StreamReader.atEnd() is false while bytes remain and true after end of stream", async () => {
  const r = new StreamReader(new BytesChannel(Uint8Array.from([1, 2]), 1), 16);
  assert.equal(await r.atEnd(), false);
  assert.equal(r.u8(), 1);
  assert.equal(await r.atEnd(), false);
  assert.equal(r.u8(), 2);
  assert.equal(await r.atEnd(), true);
  assert.equal(await r.atEnd(), true, "stays at end");
  await assert.rejects(r.need(1), StreamError);
});

Deno.test("StreamReader.atEnd() propagates a channel failure instead of reporting end", async () => {
  const ch = new BytesChannel(new Uint8Array(0));
  ch.close();
  const r = new StreamReader(ch, 16);
  await assert.rejects(r.atEnd(), /closed/);
});

Deno.test("StreamReader.str8() reads an empty string and a 255-byte string split over reads", async () => {
  const long = "n".repeat(255);
  const bytes = Uint8Array.from([0, 255, ...new TextEncoder().encode(long)]);
  const r = new StreamReader(new BytesChannel(bytes, 5), 300);
  assert.equal(await r.str8(), "");
  assert.equal(await r.str8(), long);
  assert.equal(await r.atEnd(), true);
});

Deno.test("StreamReader.take() returns the bytes without copying until the next need", async () => {
  const r = new StreamReader(new BytesChannel(Uint8Array.from([5, 6, 7, 8])), 16);
  await r.need(4);
  const view = r.take(3);
  assert.deepEqual([...view], [5, 6, 7]);
  assert.equal(view.buffer, r.buf.buffer);
  assert.equal(r.avail, 1);
});

Deno.test("StreamReader defaults to a 4 MiB buffer", () => {
  const r = new StreamReader(new BytesChannel(new Uint8Array(0)));
  assert.equal(READ_BUFFER_SIZE, 4 << 20);
  assert.equal(r.buf.length, READ_BUFFER_SIZE);
});
