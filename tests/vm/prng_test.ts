import assert from "node:assert/strict";
import { isValidPrngState, xorshiftNext, xorshiftSeed } from "../../vm/prng.ts";

Deno.test("xorshiftSeed is deterministic, seed-dependent and never all zero", () => {
  assert.deepEqual(xorshiftSeed(7), xorshiftSeed(7));
  assert.notDeepEqual(xorshiftSeed(7), xorshiftSeed(8));
  for (const seed of [0, 1, -1, 2 ** 32, 0x61c88647]) {
    assert.ok(isValidPrngState([...xorshiftSeed(seed)]), `seed ${seed}`);
  }
});

Deno.test("xorshiftNext follows Marsaglia's xorshift128 reference sequence", () => {
  // Marsaglia (2003): x=123456789, y=362436069, z=521288629, w=88675123.
  const state = new Uint32Array([123456789, 362436069, 521288629, 88675123]);
  assert.equal(xorshiftNext(state), 3701687786);
  assert.equal(xorshiftNext(state), 458299110);
  assert.equal(xorshiftNext(state), 2500872618);
});

Deno.test("isValidPrngState rejects all-zero, short and out-of-range states", () => {
  assert.equal(isValidPrngState([0, 0, 0, 0]), false);
  assert.equal(isValidPrngState([1, 2, 3]), false);
  assert.equal(isValidPrngState([1, 2, 3, 2 ** 32]), false);
  assert.equal(isValidPrngState([1, 2, 3, -1]), false);
  assert.equal(isValidPrngState([0, 0, 0, 1]), true);
});
