import assert from "node:assert/strict";
import { PAGE_SHIFT, PAGE_SIZE } from "../../../engine/format/constants.ts";
import * as vm from "../../../vm/ram.ts";

Deno.test("the stream's page size is the guest's", () => {
  assert.equal(PAGE_SIZE, vm.PAGE_SIZE);
  assert.equal(PAGE_SHIFT, vm.PAGE_SHIFT);
  assert.equal(1 << PAGE_SHIFT, PAGE_SIZE);
});
