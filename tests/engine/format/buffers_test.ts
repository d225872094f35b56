import assert from "node:assert/strict";
import {
  returnStreamBuffer,
  STREAM_BUFFER_SIZE,
  takeStreamBuffer,
  warmStreamBuffers,
} from "../../../engine/format/buffers.ts";
import { StreamReader } from "../../../engine/format/reader.ts";
import { StreamWriter, TURN_MS } from "../../../engine/format/writer.ts";
import { BytesChannel, CaptureChannel } from "../../helpers/byte_channels.ts";
import { FakeClock } from "../../helpers/fake_clock.ts";

Deno.test("stream buffers: a returned default-size buffer is handed out again; other sizes are not pooled", () => {
  warmStreamBuffers();
  const a = takeStreamBuffer(STREAM_BUFFER_SIZE);
  assert.equal(a.length, STREAM_BUFFER_SIZE);
  returnStreamBuffer(a);
  assert.equal(takeStreamBuffer(STREAM_BUFFER_SIZE), a);
  returnStreamBuffer(a);
  returnStreamBuffer(a); // twice: pooled once
  const b = takeStreamBuffer(STREAM_BUFFER_SIZE);
  const c = takeStreamBuffer(STREAM_BUFFER_SIZE);
  assert.notEqual(b, c);
  const small = takeStreamBuffer(64);
  assert.equal(small.length, 64);
  returnStreamBuffer(small);
  assert.notEqual(takeStreamBuffer(64), small);
  returnStreamBuffer(b);
  returnStreamBuffer(c);
});

Deno.test("StreamWriter.release() after drain returns its buffers; bytes stays valid", async () => {
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch);
  const bufs = [w.buf];
  await w.room(8);
  w.be64(42);
  await w.flush();
  bufs.push(w.buf);
  w.u8(1);
  await w.drain();
  w.release();
  assert.equal(w.bytes, 9);
  assert.equal(ch.bytes().length, 9);
  const again = [takeStreamBuffer(STREAM_BUFFER_SIZE), takeStreamBuffer(STREAM_BUFFER_SIZE)];
  assert.ok(again.every((b) => bufs.includes(b)), "the writer's buffers are reused");
  for (const b of again) returnStreamBuffer(b);
});

Deno.test("StreamReader.release() returns its buffer; offset and received stay valid", async () => {
  const r = new StreamReader(new BytesChannel(Uint8Array.from([1, 2, 3, 4, 5])));
  const buf = r.buf;
  await r.need(5);
  r.u8();
  r.release();
  assert.equal(r.offset, 1);
  assert.equal(r.received, 5);
  const again = takeStreamBuffer(STREAM_BUFFER_SIZE);
  assert.equal(again, buf);
  returnStreamBuffer(again);
});

Deno.test("StreamWriter and StreamReader call the injected turn every TURN_MS of their clock", async () => {
  let turns = 0;
  const turn = () => {
    turns++;
    return Promise.resolve();
  };
  const clock = new FakeClock();
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 64, { turn, clock });
  for (let ms = 1; ms <= 5 * TURN_MS; ms++) {
    clock.advance(1);
    await w.breathe();
    assert.equal(turns, Math.floor(ms / TURN_MS), `writer turns after ${ms} ms`);
  }
  turns = 0;
  const r = new StreamReader(new BytesChannel(new Uint8Array(1 << 16), 1), 16, { turn, clock });
  for (let ms = 1; ms <= 5 * TURN_MS; ms++) {
    clock.advance(1);
    await r.need(1);
    r.u8();
    assert.equal(turns, Math.floor(ms / TURN_MS), `reader turns after ${ms} ms`);
  }
});
