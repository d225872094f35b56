import assert from "node:assert/strict";
import { xbzrleDecode, xbzrleEncode, XbzrleError } from "../../../engine/format/xbzrle.ts";
import { rng } from "../../helpers/rng.ts";

const PAGE = 4096;

function page(fill = 0): Uint8Array {
  return new Uint8Array(PAGE).fill(fill);
}

function encode(old: Uint8Array, cur: Uint8Array, room = PAGE): Uint8Array | null {
  const dst = new Uint8Array(room);
  const n = xbzrleEncode(old, cur, dst);
  return n < 0 ? null : dst.slice(0, n);
}

Deno.test("xbzrleEncode() of identical pages is empty", () => {
  assert.deepEqual(encode(page(7), page(7)), new Uint8Array(0));
});

Deno.test("xbzrleEncode() of a page differing in bytes 10-12 is 0a 03 xx yy zz", () => {
  const old = page();
  const cur = page();
  cur.set([0xaa, 0xbb, 0xcc], 10);
  assert.deepEqual([...encode(old, cur)!], [0x0a, 0x03, 0xaa, 0xbb, 0xcc]);
});

Deno.test("xbzrleEncode() starts with an empty unchanged run when byte 0 changed", () => {
  const cur = page();
  cur[0] = 1;
  assert.deepEqual([...encode(page(), cur)!], [0x00, 0x01, 0x01]);
});

Deno.test("xbzrleEncode() writes runs of 128 and more as two-byte ULEB128", () => {
  const cur = page();
  cur[300] = 9; // unchanged run of 300 = 0xac 0x02
  assert.deepEqual([...encode(page(), cur)!], [0xac, 0x02, 0x01, 0x09]);
  const all = page(1);
  const enc = encode(page(), all, PAGE + 3)!;
  assert.deepEqual([...enc.subarray(0, 3)], [0x00, 0x80, 0x20]); // 0, then 4096 changed
  assert.equal(enc.length, 3 + PAGE);
});

Deno.test("xbzrleEncode() answers -1 when the encoding would exceed the page", () => {
  const cur = page();
  for (let i = 0; i < PAGE; i += 2) cur[i] = 1; // every other byte changed: 3 bytes per 2
  assert.equal(xbzrleEncode(page(), cur, new Uint8Array(PAGE)), -1);
});

Deno.test("xbzrleEncode()/xbzrleDecode() round trip random and crafted pages", () => {
  const next = rng(42);
  for (let t = 0; t < 300; t++) {
    const old = new Uint8Array(PAGE).map(() => (next() * 256) | 0);
    const cur = old.slice();
    const changes = [0, 1, 5, 40, 400, 2000][t % 6];
    for (let c = 0; c < changes; c++) cur[(next() * PAGE) | 0] = (next() * 256) | 0;
    if (t % 7 === 0) cur[PAGE - 1] ^= 0xff; // change at the very end
    if (t % 11 === 0) cur[0] ^= 0xff; // and at the very start
    const enc = encode(old, cur);
    if (enc === null) continue; // overflow: sent plainly
    const target = old.slice();
    const covered = xbzrleDecode(enc, target);
    assert.ok(covered <= PAGE);
    assert.deepEqual(target, cur, `round trip ${t}`);
  }
});

Deno.test("xbzrleEncode() on 1 % changed bytes is at least 10x smaller than the page", () => {
  const next = rng(7);
  const old = new Uint8Array(PAGE).map(() => (next() * 256) | 0);
  const cur = old.slice();
  for (let i = 0; i < PAGE / 100; i++) cur[(next() * PAGE) | 0] ^= 0x5a;
  const enc = encode(old, cur)!;
  assert.ok(enc.length * 10 <= PAGE, `${enc.length} bytes`);
});

function rejects(bytes: number[], pattern: RegExp): void {
  const target = page(3);
  assert.throws(() => xbzrleDecode(new Uint8Array(bytes), target), (e: unknown) => {
    assert.ok(e instanceof XbzrleError);
    assert.match(e.message, pattern);
    return true;
  });
  assert.deepEqual(target, page(3), "a rejected record leaves the page untouched");
}

Deno.test("xbzrleDecode() rejects an empty unchanged run after the first pair", () => {
  rejects([0x01, 0x01, 0xaa, 0x00, 0x01, 0xbb], /empty unchanged run/);
});

Deno.test("xbzrleDecode() rejects an empty changed run", () => {
  rejects([0x05, 0x00, 0x01], /empty changed run/);
});

Deno.test("xbzrleDecode() rejects output past 4096 bytes", () => {
  rejects([0xff, 0x1f, 0x02, 0x01, 0x02], /output past 4096/); // 4095 + 2
  rejects([0x80, 0x21, 0x01, 0x01], /output past 4096/); // unchanged run of 4224
});

Deno.test("xbzrleDecode() rejects a changed run reaching past the record", () => {
  rejects([0x00, 0x05, 0x01, 0x02], /past the end of the encoding/);
});

Deno.test("xbzrleDecode() rejects a record ending inside a pair", () => {
  rejects([0x05], /ends inside a run pair/);
  rejects([0x05, 0x01, 0xaa, 0x07], /ends inside a run pair/);
  rejects([0x81, 0x01], /ends before a changed run/);
});

Deno.test("xbzrleDecode() rejects run lengths longer than two bytes", () => {
  rejects([0x80, 0x80, 0x01, 0x01, 0x01], /longer than two bytes/);
});

Deno.test("xbzrleDecode() never throws anything but XbzrleError on random input (fuzz)", () => {
  const next = rng(99);
  for (let t = 0; t < 5000; t++) {
    const len = (next() * 64) | 0;
    const src = new Uint8Array(len).map(
      () => (next() < 0.5 ? (next() * 4) | 0 : (next() * 256) | 0),
    );
    const target = page(1);
    try {
      const covered = xbzrleDecode(src, target);
      assert.ok(covered >= 0 && covered <= PAGE);
    } catch (e) {
      assert.ok(e instanceof XbzrleError, String(e));
      assert.deepEqual(target, page(1));
    }
  }
});
