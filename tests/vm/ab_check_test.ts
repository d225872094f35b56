import assert from "node:assert/strict";
import { abExpectedByte, abInvariantViolation } from "../../vm/ab_check.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";

function ram(values: number[]): Uint8Array {
  const bytes = new Uint8Array(values.length * PAGE_SIZE);
  values.forEach((v, p) => bytes[p * PAGE_SIZE] = v);
  return bytes;
}

Deno.test("abInvariantViolation accepts one value or two adjacent values (mod 256)", () => {
  assert.equal(abInvariantViolation(ram([0, 0, 0]), 3), null);
  assert.equal(abInvariantViolation(ram([5, 5, 4, 4]), 4), null);
  assert.equal(abInvariantViolation(ram([0, 0, 255, 255]), 4), null);
  assert.equal(abInvariantViolation(ram([0, 255, 0]), 3), null);
});

Deno.test("abInvariantViolation reports non-adjacent and third values", () => {
  assert.match(abInvariantViolation(ram([0, 2]), 2) ?? "", /page 1 byte 0 is 2, not adjacent/);
  assert.match(abInvariantViolation(ram([1, 2, 0]), 3) ?? "", /page 2 .* third value/);
  assert.equal(abInvariantViolation(ram([1, 2, 0]), 2), null, "only the range is checked");
});

Deno.test("abExpectedByte gives each page's increment count after n ops", () => {
  // 3 pages, 7 ops: pages 0,1,2,0,1,2,0 → 3, 2, 2.
  assert.deepEqual([0, 1, 2].map((p) => abExpectedByte(7, p, 3)), [3, 2, 2]);
  assert.deepEqual([0, 1, 2].map((p) => abExpectedByte(1, p, 3)), [1, 0, 0]);
  assert.equal(abExpectedByte(0, 0, 3), 0);
  assert.equal(abExpectedByte(256 * 3, 0, 3), 0, "wraps mod 256");
});
