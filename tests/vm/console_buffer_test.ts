/** ConsoleBuffer: bounded history, running offsets, listeners, history carried over. */
import assert from "node:assert/strict";
import { ConsoleBuffer } from "../../vm/console_buffer.ts";

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("ConsoleBuffer keeps the last capacity bytes and counts every byte", () => {
  const c = new ConsoleBuffer(8);
  c.append(bytes("hello "));
  assert.deepEqual({ ...c.tail(), bytes: text(c.tail().bytes) }, { bytes: "hello ", offset: 0 });
  c.append(bytes("world"));
  assert.equal(c.total, 11);
  assert.equal(text(c.tail().bytes), "lo world");
  assert.equal(c.tail().offset, 3);
  assert.equal(text(c.tail(3).bytes), "rld");
  assert.equal(c.tail(3).offset, 8);
  assert.equal(c.tail(0).bytes.length, 0);
  c.append(bytes("0123456789"));
  assert.equal(text(c.tail().bytes), "23456789");
  assert.equal(c.total, 21);
  assert.throws(() => new ConsoleBuffer(0), RangeError);
});

Deno.test("ConsoleBuffer tells listeners each chunk with its offset, until they unsubscribe", () => {
  const c = new ConsoleBuffer(4);
  const seen: [string, number][] = [];
  const off = c.subscribe((b, offset) => seen.push([text(b), offset]));
  c.append(bytes("ab"));
  c.append(new Uint8Array());
  c.append(bytes("cdef"));
  off();
  c.append(bytes("g"));
  assert.deepEqual(seen, [["ab", 0], ["cdef", 2]]);
});

Deno.test("ConsoleBuffer.restore puts a source's history first and carries its offsets on", () => {
  const c = new ConsoleBuffer(16);
  c.append(bytes("new"));
  c.restore(bytes("old history "), 1000);
  assert.equal(text(c.tail().bytes), "old history new");
  assert.equal(c.tail().offset, 1000);
  assert.equal(c.total, 1015);
  c.append(bytes("!"));
  assert.equal(c.total, 1016);
  assert.equal(text(c.tail(2).bytes), "w!");
});
