/**
 * The WebAssembly SIMD kernels against the pure-TS ones (engine/format/xbzrle.ts):
 * byte-identical XBZRLE encodings — overflow (-1) included, for every `dst` size —
 * the same accept/reject decision and message from the decoder, and the same zero
 * scans, with buffers both inside the wasm memory (used in place) and outside it
 * (copied in and out).
 */
import assert from "node:assert/strict";
import { xbzrleDecode, xbzrleEncode, XbzrleError } from "../../../engine/format/xbzrle.ts";
import {
  createKernels,
  KernelKind,
  type Kernels,
  selectedKernelKind,
  sharedKernels,
  WASM_SIMD_SUPPORTED,
} from "../../../engine/wasm/kernels.ts";
import { rng } from "../../helpers/rng.ts";

const PAGE = 4096;

const wasm = createKernels({ kind: KernelKind.WASM, arenaBytes: 6 * PAGE });
const ts = createKernels({ kind: KernelKind.TS, arenaBytes: 6 * PAGE });

/** A named (old, cur) page pair. */
interface Case {
  name: string;
  old: Uint8Array;
  cur: Uint8Array;
}

function cases(): Case[] {
  const next = rng(1234);
  const random = () => new Uint8Array(PAGE).map(() => (next() * 256) | 0);
  const out: Case[] = [];
  const add = (name: string, old: Uint8Array, edit: (cur: Uint8Array) => void) => {
    const cur = old.slice();
    edit(cur);
    out.push({ name, old, cur });
  };
  add("identical", random(), () => {});
  add("identical zero pages", new Uint8Array(PAGE), () => {});
  for (const at of [0, 1, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 129, 4031, 4032, 4095]) {
    add(`one byte changed at ${at}`, random(), (c) => c[at] ^= 0xff);
  }
  for (const [from, to] of [[0, 127], [0, 128], [0, 129], [100, 227], [100, 228], [3968, 4096]]) {
    add(`bytes ${from}..${to} changed`, random(), (c) => {
      for (let i = from; i < to; i++) c[i] ^= 1;
    });
  }
  for (const gap of [127, 128, 129, 300, 4095]) {
    add(`unchanged run of ${gap} then a change`, random(), (c) => c[gap] ^= 1);
  }
  for (const pct of [0.1, 1, 5, 20, 50, 90]) {
    for (let k = 0; k < 8; k++) {
      add(`${pct} % of bytes changed #${k}`, random(), (c) => {
        for (let n = 0; n < (PAGE * pct) / 100; n++) {
          c[(next() * PAGE) | 0] ^= 1 + ((next() * 255) | 0);
        }
      });
    }
  }
  add("all changed", random(), (c) => {
    for (let i = 0; i < PAGE; i++) c[i] ^= 0x80;
  });
  for (const [period, on] of [[2, 1], [3, 1], [3, 2], [4, 1], [5, 3], [16, 8], [17, 1]]) {
    add(`every ${on} of ${period} bytes changed (overflows)`, random(), (c) => {
      for (let i = 0; i < PAGE; i++) if (i % period < on) c[i] ^= 0x11;
    });
    add(`every ${on} of ${period} bytes changed, offset 1`, random(), (c) => {
      for (let i = 1; i < PAGE; i++) if ((i - 1) % period < on) c[i] ^= 0x11;
    });
  }
  return out;
}

const CASES = cases();
/** dst sizes: tiny, around typical encodings, page-sized, and beyond any encoding. */
const ROOMS = [0, 1, 2, 3, 4, 5, 64, 100, 1000, 2048, 4095, PAGE, PAGE + 3, 6200, 8192, 10000];

function encodeWith(k: Kernels | null, old: Uint8Array, cur: Uint8Array, room: number) {
  const dst = new Uint8Array(room).fill(0xee);
  const n = k ? k.xbzrleEncode(old, cur, dst) : xbzrleEncode(old, cur, dst);
  return { n, bytes: n > 0 ? dst.slice(0, n) : new Uint8Array(0) };
}

Deno.test("WebAssembly SIMD is available here, so the wasm kernels are the default", () => {
  assert.ok(WASM_SIMD_SUPPORTED);
  assert.equal(wasm.kind, KernelKind.WASM);
  assert.equal(ts.kind, KernelKind.TS);
});

Deno.test("wasm xbzrleEncode() equals the TS encoder byte for byte, -1 included, for every dst size", () => {
  let overflows = 0;
  for (const { name, old, cur } of CASES) {
    for (const room of ROOMS) {
      const want = encodeWith(null, old, cur, room);
      const got = encodeWith(wasm, old, cur, room);
      assert.equal(got.n, want.n, `${name}, dst ${room}: length`);
      assert.deepEqual(got.bytes, want.bytes, `${name}, dst ${room}: bytes`);
      if (want.n < 0) overflows++;
    }
    // The exact size fits, one byte less does not (unless the +2 room check bites first).
    const full = encodeWith(null, old, cur, 10000).n;
    for (const room of [full, full + 1, full + 2, full - 1, full - 2].filter((r) => r >= 0)) {
      assert.equal(encodeWith(wasm, old, cur, room).n, encodeWith(null, old, cur, room).n, name);
    }
  }
  assert.ok(overflows > 100, "the cases exercise overflow");
});

Deno.test("wasm xbzrleEncode() in place (arena and scratch) equals copying in, at odd offsets too", () => {
  for (const { name, old, cur } of CASES) {
    const want = encodeWith(null, old, cur, PAGE);
    for (const [o, c] of [[0, PAGE], [PAGE + 1, 2 * PAGE + 7], [3 * PAGE + 63, 15]]) {
      wasm.arena.set(old, o);
      wasm.arena.set(cur, c);
      const got = encodeWith(
        wasm,
        wasm.arena.subarray(o, o + PAGE),
        wasm.arena.subarray(c, c + PAGE),
        PAGE,
      );
      assert.deepEqual(got, want, `${name} at ${o}/${c}`);
    }
    wasm.scratch.set(cur);
    assert.deepEqual(encodeWith(wasm, old, wasm.scratch, PAGE), want, `${name} from scratch`);
    // Unaligned views outside wasm memory (the TS encoder's byte path).
    const buf = new Uint8Array(2 * PAGE + 8);
    buf.set(old, 1);
    buf.set(cur, PAGE + 3);
    const uo = buf.subarray(1, 1 + PAGE), uc = buf.subarray(PAGE + 3, 2 * PAGE + 3);
    assert.deepEqual(encodeWith(wasm, uo, uc, PAGE), want, `${name} unaligned`);
    assert.deepEqual(encodeWith(ts, uo, uc, PAGE), want, `${name} unaligned, TS kernels`);
  }
});

Deno.test("wasm xbzrleEncode() honours len below a page and hands len above it to TS", () => {
  const next = rng(5);
  for (let t = 0; t < 200; t++) {
    const len = [1, 15, 16, 17, 63, 64, 65, 100, 1000, 4095, 5000, 8192][t % 12];
    const old = new Uint8Array(len + 7).map(() => (next() * 256) | 0);
    const cur = old.slice();
    for (let n = 0; n < (t % 5) * len / 20; n++) cur[(next() * len) | 0] ^= 3;
    if (t % 3 === 0) cur[len - 1] ^= 1;
    for (const room of [len >> 1, len, 2 * len]) {
      const a = new Uint8Array(room), b = new Uint8Array(room);
      const n = xbzrleEncode(old, cur, a, len);
      assert.equal(wasm.xbzrleEncode(old, cur, b, len), n, `len ${len} room ${room}`);
      // After -1 what dst holds is unspecified.
      if (n >= 0) assert.deepEqual(b.subarray(0, n), a.subarray(0, n));
    }
  }
});

Deno.test("wasm and TS xbzrleDecode() round trip every case, in place and through copies", () => {
  for (const { name, old, cur } of CASES) {
    const enc = encodeWith(null, old, cur, 10000);
    for (const k of [wasm, ts]) {
      const target = old.slice();
      assert.equal(k.xbzrleDecode(enc.bytes, target), xbzrleDecode(enc.bytes, old.slice()), name);
      assert.deepEqual(target, cur, `${name} (${k.kind})`);
      // Page inside the kernels' memory, encoding inside too.
      k.arena.set(old, PAGE + 5);
      k.arena.set(enc.bytes, 3 * PAGE);
      const page = k.arena.subarray(PAGE + 5, 2 * PAGE + 5);
      k.xbzrleDecode(k.arena.subarray(3 * PAGE, 3 * PAGE + enc.bytes.length), page);
      assert.deepEqual(page, cur, `${name} in place (${k.kind})`);
    }
  }
});

/** The TS decoder's verdict on `src`: covered bytes, or the error message. */
function verdict(
  decode: (src: Uint8Array, page: Uint8Array) => number,
  src: Uint8Array,
  page: Uint8Array,
) {
  const before = page.slice();
  try {
    return { ok: decode(src, page), page: page.slice() };
  } catch (e) {
    assert.ok(e instanceof XbzrleError, String(e));
    assert.deepEqual(page, before, "a rejected encoding leaves the page untouched");
    return { error: e.message, position: e.position };
  }
}

Deno.test("wasm xbzrleDecode() accepts and rejects exactly what the TS decoder does, same message", () => {
  const next = rng(77);
  const crafted = [
    [0x01, 0x01, 0xaa, 0x00, 0x01, 0xbb],
    [0x05, 0x00, 0x01],
    [0xff, 0x1f, 0x02, 0x01, 0x02],
    [0x80, 0x21, 0x01, 0x01],
    [0x00, 0x05, 0x01, 0x02],
    [0x05],
    [0x05, 0x01, 0xaa, 0x07],
    [0x81, 0x01],
    [0x80, 0x80, 0x01, 0x01, 0x01],
    [0x00, 0x80, 0x80, 0x01],
    [0xff, 0x7f, 0x01, 0x00], // unchanged run of 16383 (the largest two-byte length)
    [0x00, 0xff, 0x7f], // changed run of 16383
    [0x80, 0x00, 0x01, 0x01], // two-byte 0 as the first unchanged run: allowed
    [0x00, 0x80, 0x00], // two-byte empty changed run
    [0x00, 0x80, 0x20, ...new Array(4096).fill(7)], // the whole page changed
    [0xff, 0x1f, 0x01, 0x09], // the very last byte
    [0x80, 0x20, 0x01, 0x09], // one past it
  ];
  const inputs: Uint8Array[] = crafted.map((b) => new Uint8Array(b));
  for (let t = 0; t < 20000; t++) {
    const len = (next() * 48) | 0;
    inputs.push(
      new Uint8Array(len).map(() => (next() < 0.6 ? (next() * 4) | 0 : (next() * 256) | 0)),
    );
  }
  let rejected = 0;
  for (const src of inputs) {
    const want = verdict(xbzrleDecode, src, new Uint8Array(PAGE).fill(1));
    const got = verdict((s, p) => wasm.xbzrleDecode(s, p), src, new Uint8Array(PAGE).fill(1));
    assert.deepEqual(got, want, `[${[...src.subarray(0, 16)]}]`);
    wasm.arena.fill(1, 0, PAGE);
    const inPlace = verdict((s, p) => wasm.xbzrleDecode(s, p), src, wasm.arena.subarray(0, PAGE));
    assert.deepEqual(inPlace, want, `in place [${[...src.subarray(0, 16)]}]`);
    if (want.error) rejected++;
  }
  assert.ok(rejected > 1000 && rejected < inputs.length - 100, `${rejected} rejected`);
});

Deno.test("wasm and TS zero scans agree on a single non-zero byte anywhere", () => {
  const next = rng(3);
  const PAGES = 24;
  const outside = new Uint8Array(PAGES * PAGE);
  const inside = createKernels({ kind: KernelKind.WASM, arenaBytes: PAGES * PAGE });
  for (const k of [wasm, ts]) {
    assert.equal(k.firstNonZeroPage(outside), PAGES);
    assert.equal(k.isZero(outside), true);
  }
  assert.equal(inside.firstNonZeroPage(inside.arena), PAGES);
  for (let t = 0; t < 400; t++) {
    const at = t < 8
      ? [0, 15, 16, 63, 64, 4095, 4096, PAGES * PAGE - 1][t]
      : (next() * PAGES * PAGE) | 0;
    const value = 1 + ((next() * 255) | 0);
    outside[at] = value;
    inside.arena[at] = value;
    const page = Math.floor(at / PAGE);
    for (const k of [wasm, ts]) {
      assert.equal(k.firstNonZeroPage(outside), page, `${k.kind} byte ${at}`);
      assert.equal(k.isZero(outside), false);
      assert.equal(k.isZero(outside.subarray(page * PAGE, page * PAGE + PAGE)), false);
      // Odd lengths and offsets around the byte.
      const from = Math.max(0, at - ((next() * 100) | 0));
      const to = Math.min(outside.length, at + 1 + ((next() * 100) | 0));
      assert.equal(k.isZero(outside.subarray(from, to)), false, `${k.kind} ${from}..${to}`);
      assert.equal(k.isZero(outside.subarray(from, at)), true, `${k.kind} ${from}..${at}`);
      assert.equal(k.isZero(outside.subarray(at + 1, to)), true, `${k.kind} ${at + 1}..${to}`);
    }
    assert.equal(inside.firstNonZeroPage(inside.arena), page, `in place, byte ${at}`);
    assert.equal(inside.isZero(inside.arena.subarray(at & ~63, (at & ~63) + 64)), false);
    assert.equal(inside.isZero(inside.arena.subarray(at + 1, at + 1 + 100)), true);
    outside[at] = 0;
    inside.arena[at] = 0;
  }
});

Deno.test("FERRY_KERNELS=ts selects the TS kernels; unset, wasm", () => {
  const saved = Deno.env.get("FERRY_KERNELS");
  try {
    Deno.env.set("FERRY_KERNELS", "ts");
    assert.equal(selectedKernelKind(), KernelKind.TS);
    assert.equal(createKernels().kind, KernelKind.TS);
    Deno.env.delete("FERRY_KERNELS");
    assert.equal(selectedKernelKind(), KernelKind.WASM);
    assert.equal(createKernels({ arenaBytes: PAGE }).kind, KernelKind.WASM);
  } finally {
    if (saved === undefined) Deno.env.delete("FERRY_KERNELS");
    else Deno.env.set("FERRY_KERNELS", saved);
  }
  assert.ok(sharedKernels() === sharedKernels(), "one shared set");
});

Deno.test("TS xbzrleEncode() with len not a multiple of 4 encodes a change in the last bytes (regression)", () => {
  // Found by the wasm/TS comparison: the word scan restarted behind the cursor and
  // wrote a run of -1 (0xff 0x01).
  const old = new Uint8Array(16);
  const cur = old.slice();
  cur[12] = 0xdb;
  const dst = new Uint8Array(16);
  assert.equal(xbzrleEncode(old, cur, dst, 15), 3);
  assert.deepEqual([...dst.subarray(0, 3)], [12, 1, 0xdb]);
  assert.equal(wasm.xbzrleEncode(old, cur, dst.fill(0), 15), 3);
  assert.deepEqual([...dst.subarray(0, 3)], [12, 1, 0xdb]);
});
