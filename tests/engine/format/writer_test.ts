import assert from "node:assert/strict";
import { Section } from "../../../engine/format/constants.ts";
import { StreamWriter, WRITE_BUFFER_SIZE } from "../../../engine/format/writer.ts";
import { CaptureChannel, hex } from "../../helpers/byte_channels.ts";

/** Runs `fn` on a fresh writer, drains it and returns every byte it produced. */
async function written(
  fn: (w: StreamWriter) => void | Promise<void>,
  size = 1024,
): Promise<string> {
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, size);
  await fn(w);
  await w.drain();
  return hex(ch.bytes());
}

Deno.test("StreamWriter.u8/be16/be32() append big-endian bytes exactly", async () => {
  assert.equal(
    await written((w) => {
      w.u8(0xab);
      w.be16(0x0102);
      w.be16(0xfffe);
      w.be32(0x01020304);
      w.be32(0xdeadbeef);
    }),
    "ab 01 02 ff fe 01 02 03 04 de ad be ef",
  );
});

Deno.test("StreamWriter.be64() splits values up to 2^53 into big-endian words", async () => {
  assert.equal(
    await written((w) => {
      w.be64(0);
      w.be64(0x10);
      w.be64(0x1_0000_0000);
      w.be64(0x0012_3456_789a_bcde);
      w.be64(Number.MAX_SAFE_INTEGER);
    }),
    [
      "00 00 00 00 00 00 00 00",
      "00 00 00 00 00 00 00 10",
      "00 00 00 01 00 00 00 00",
      "00 12 34 56 78 9a bc de",
      "00 1f ff ff ff ff ff ff",
    ].join(" "),
  );
});

Deno.test("StreamWriter.str8() writes a u8 length and UTF-8 bytes, up to 255 bytes", async () => {
  assert.equal(await written((w) => w.str8("ram")), "03 72 61 6d");
  assert.equal(await written((w) => w.str8("")), "00");
  assert.equal(await written((w) => w.str8("é")), "02 c3 a9");
  const long = "x".repeat(255);
  assert.equal(await written((w) => w.str8(long)), ["ff", ...Array(255).fill("78")].join(" "));
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 1024);
  assert.throws(() => w.str8("y".repeat(256)), RangeError);
  assert.equal(w.pos, 0, "a rejected string writes nothing");
});

Deno.test("StreamWriter.header() writes QEVM magic and version 3", async () => {
  assert.equal(await written((w) => w.header()), "51 45 56 4d 00 00 00 03");
});

Deno.test("StreamWriter.configuration() writes 0x07, be32 length, machine name", async () => {
  assert.equal(
    await written((w) => w.configuration("ferry-pc")),
    "07 00 00 00 08 66 65 72 72 79 2d 70 63",
  );
});

Deno.test("StreamWriter.sectionStart() writes START and FULL headers with id, name, instance, version", async () => {
  assert.equal(
    await written((w) => w.sectionStart(Section.START, 0, "ram", 0, 4)),
    "01 00 00 00 00 03 72 61 6d 00 00 00 00 00 00 00 04",
  );
  assert.equal(
    await written((w) => w.sectionStart(Section.FULL, 0x01020304, "vcpu", 7, 1)),
    "04 01 02 03 04 04 76 63 70 75 00 00 00 07 00 00 00 01",
  );
});

Deno.test("StreamWriter.sectionPart() writes PART and END headers as type + be32 id", async () => {
  assert.equal(await written((w) => w.sectionPart(Section.PART, 0)), "02 00 00 00 00");
  assert.equal(await written((w) => w.sectionPart(Section.END, 0x0a0b0c0d)), "03 0a 0b 0c 0d");
});

Deno.test("StreamWriter.footer() writes 0x7e + be32 section id", async () => {
  assert.equal(await written((w) => w.footer(1)), "7e 00 00 00 01");
});

Deno.test("StreamWriter.end() writes EOF, 0x06, be32 length and the JSON", async () => {
  const desc = { page_size: 4096, devices: [] };
  const json = new TextEncoder().encode(JSON.stringify(desc));
  const expected = ["00", "06", hex([0, 0, 0, json.length]), hex(json)].join(" ");
  assert.equal(await written((w) => w.end(desc)), expected);
});

Deno.test("StreamWriter.end() streams a description larger than the buffer across flushes", async () => {
  const desc = { page_size: 4096, pad: "z".repeat(300) };
  const json = new TextEncoder().encode(JSON.stringify(desc));
  const expected = ["00 06", hex([0, 0, json.length >>> 8, json.length & 0xff]), hex(json)].join(
    " ",
  );
  assert.equal(await written((w) => w.end(desc), 64), expected);
});

Deno.test("StreamWriter.bytes counts buffered and flushed bytes; free shrinks as the buffer fills", async () => {
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 32);
  assert.equal(w.bytes, 0);
  assert.equal(w.free, 32);
  await w.header();
  assert.equal(w.bytes, 8);
  assert.equal(w.free, 24);
  await w.flush();
  assert.equal(w.bytes, 8);
  assert.equal(w.free, 32);
  await w.footer(3);
  assert.equal(w.bytes, 13);
  await w.drain();
  assert.equal(ch.bytes().length, 13);
});

Deno.test("StreamWriter.room() flushes when a record does not fit and rejects records larger than the buffer", async () => {
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 16);
  await w.room(12);
  w.raw(new Uint8Array(12).fill(1));
  await w.room(8); // 4 left: must flush first
  assert.equal(w.pos, 0);
  w.be64(2);
  await assert.rejects(w.room(17), RangeError);
  await w.drain();
  assert.equal(hex(ch.bytes()), hex([...new Uint8Array(12).fill(1), 0, 0, 0, 0, 0, 0, 0, 2]));
});

Deno.test("StreamWriter.write() splits data larger than the buffer across flushes, in order", async () => {
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 100);
  const data = Uint8Array.from({ length: 1234 }, (_, i) => (i * 7) & 0xff);
  w.u8(9);
  await w.write(data);
  await w.drain();
  const out = ch.bytes();
  assert.equal(out.length, 1235);
  assert.equal(out[0], 9);
  assert.deepEqual(out.subarray(1), data);
  assert.ok(ch.writes >= 12, `expected many flushes, got ${ch.writes}`);
});

Deno.test("StreamWriter.flush() double-buffers: every byte arrives in order across many slow flushes, one write in flight", async () => {
  // The channel copies each chunk only when its write completes, several timer
  // turns later: if the writer refilled a buffer still in flight, bytes would differ.
  const ch = new CaptureChannel({ delayTicks: 1 });
  const w = new StreamWriter(ch, 64);
  const expected: number[] = [];
  let x = 12345;
  const rnd = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  for (let i = 0; i < 600; i++) {
    const v = rnd();
    switch (i % 5) {
      case 0:
        await w.room(1);
        w.u8(v & 0xff);
        expected.push(v & 0xff);
        break;
      case 1:
        await w.room(2);
        w.be16(v & 0xffff);
        expected.push((v >>> 8) & 0xff, v & 0xff);
        break;
      case 2:
        await w.room(4);
        w.be32(v);
        expected.push(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
        break;
      case 3: {
        await w.room(8);
        w.be64(v * 0x200 + (i & 0x1ff));
        const big = BigInt(v) * 0x200n + BigInt(i & 0x1ff);
        for (let s = 56n; s >= 0n; s -= 8n) expected.push(Number((big >> s) & 0xffn));
        break;
      }
      case 4: {
        const data = Uint8Array.from({ length: v % 150 }, (_, k) => (k + v) & 0xff);
        await w.write(data);
        expected.push(...data);
        break;
      }
    }
    if (i % 7 === 0) await w.flush();
  }
  assert.equal(w.bytes, expected.length);
  await w.drain();
  assert.ok(ch.writes > 50, `expected many flushes, got ${ch.writes}`);
  assert.equal(ch.maxInFlight, 1, "at most one write in flight");
  assert.deepEqual(ch.bytes(), Uint8Array.from(expected));
});

Deno.test("StreamWriter.flush() with nothing buffered writes nothing", async () => {
  const ch = new CaptureChannel();
  const w = new StreamWriter(ch, 64);
  await w.flush();
  await w.drain();
  assert.equal(ch.writes, 0);
});

Deno.test("StreamWriter.drain() rethrows a failed channel write, and so does every later flush", async () => {
  const ch = new CaptureChannel({ failAt: 1 });
  const w = new StreamWriter(ch, 64);
  await w.header();
  await w.flush();
  await w.footer(0);
  await w.flush(); // write #1 fails in the background
  await assert.rejects(w.drain(), /injected failure of write #1/);
  await w.footer(1);
  await assert.rejects(w.flush(), /injected failure/);
  assert.equal(hex(ch.bytes()), "51 45 56 4d 00 00 00 03");
});

Deno.test("StreamWriter defaults to a 4 MiB buffer", () => {
  const w = new StreamWriter(new CaptureChannel());
  assert.equal(WRITE_BUFFER_SIZE, 4 << 20);
  assert.equal(w.free, WRITE_BUFFER_SIZE);
});
