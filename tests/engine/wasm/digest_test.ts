/**
 * The content digest of the integrity check: the WebAssembly kernel equals the TS
 * reference for every length and offset, in place and copied in; all zeroes
 * digest to 0; every single-bit change of a page changes its digest.
 */
import assert from "node:assert/strict";
import { createKernels, digestTs, KernelKind } from "../../../engine/wasm/kernels.ts";
import {
  kernelsFor,
  returnStreamBuffer,
  STREAM_BUFFER_SIZE,
  takeStreamBuffer,
} from "../../../engine/format/buffers.ts";
import { rng } from "../../helpers/rng.ts";

const PAGE = 4096;
const wasm = createKernels({ kind: KernelKind.WASM, arenaBytes: 4 * PAGE });
const ts = createKernels({ kind: KernelKind.TS, arenaBytes: 4 * PAGE });

function random(n: number, seed: number): Uint8Array {
  const next = rng(seed);
  return new Uint8Array(n).map(() => (next() * 256) | 0);
}

Deno.test("digest: wasm equals the TS reference for lengths 0 to 5000 at odd offsets, in place and copied in", () => {
  for (let len = 0; len <= 5000; len += len < 100 ? 1 : 97) {
    const bytes = random(len + 40, len + 1);
    const pos = len % 37;
    const want = digestTs(bytes, pos, len);
    assert.equal(wasm.digest(bytes, pos, len), want, `copied in, length ${len}`);
    assert.equal(ts.digest(bytes, pos, len), want, `TS kernels, length ${len}`);
    if (len <= 3 * PAGE) {
      const padded = (len + 63) & ~63;
      wasm.arena.fill(0, 0, padded + 64);
      wasm.arena.set(bytes.subarray(pos, pos + len), 32);
      assert.equal(wasm.digest(wasm.arena, 32, padded), want, `in place, length ${len}`);
    }
  }
});

Deno.test("digest: all zeroes digest to 0; every one-bit change of a page changes the digest", () => {
  assert.equal(digestTs(new Uint8Array(PAGE), 0, PAGE), 0);
  assert.equal(wasm.digest(new Uint8Array(PAGE), 0, PAGE), 0);
  for (const page of [random(PAGE, 7), new Uint8Array(PAGE)]) {
    const base = wasm.digest(page, 0, PAGE);
    for (let i = 0; i < PAGE; i++) {
      for (let bit = 0; bit < 8; bit++) {
        page[i] ^= 1 << bit;
        assert.notEqual(wasm.digest(page, 0, PAGE), base, `byte ${i} bit ${bit}`);
        page[i] ^= 1 << bit;
      }
    }
  }
});

Deno.test("digest: pooled stream buffers are digested in place by the pool's kernels", () => {
  const buf = takeStreamBuffer(STREAM_BUFFER_SIZE);
  try {
    const k = kernelsFor(buf);
    assert.ok(k.owns(buf), "a pooled buffer lives in its kernels' memory");
    buf.set(random(PAGE, 3), 100);
    assert.equal(k.digest(buf, 100, PAGE), digestTs(buf, 100, PAGE));
    assert.ok(!kernelsFor(new Uint8Array(PAGE)).owns(new Uint8Array(PAGE)));
  } finally {
    returnStreamBuffer(buf);
  }
});

Deno.test("digest: pages move in and out at the very end of a 4 GiB block (no 32-bit wrap)", () => {
  // A 4 GiB shared memory reserves address space; only the touched pages get backed.
  let ram: WebAssembly.Memory;
  try {
    ram = new WebAssembly.Memory({ initial: 65536, maximum: 65536, shared: true });
  } catch {
    return; // an engine that cannot reserve 4 GiB cannot hold such a block either
  }
  const mover = wasm.moverFor(ram);
  assert.ok(mover);
  const bytes = new Uint8Array(ram.buffer);
  const last = 2 ** 32 - PAGE;
  const page = random(PAGE, 7);
  bytes.set(page, last);
  wasm.arena.fill(0);
  const at = wasm.arena.byteOffset;
  assert.equal(mover.copyDigest(last, at, PAGE), digestTs(page, 0, PAGE));
  assert.deepEqual(wasm.arena.subarray(0, PAGE), page);

  const other = random(PAGE, 8);
  wasm.arena.set(other);
  assert.equal(mover.digestCopy(at, last, PAGE), digestTs(other, 0, PAGE));
  assert.deepEqual(bytes.subarray(last), other);
});
