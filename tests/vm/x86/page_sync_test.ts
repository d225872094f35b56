/** The x86 guest's page sync: exactly the pages that differ are copied and named. */
import assert from "node:assert/strict";
import { pageSync } from "../../../vm/x86/page_sync.ts";

Deno.test("pageSync copies exactly the pages that differ and names each once", () => {
  const PAGE = 4096;
  const pages = 300;
  // The source is a plain (unshared) memory with the RAM at an offset, as an emulator's.
  const source = new WebAssembly.Memory({ initial: Math.ceil((pages * PAGE + 65536) / 65536) });
  const copy = new WebAssembly.Memory({
    initial: Math.ceil((pages * PAGE) / 65536),
    maximum: Math.ceil((pages * PAGE) / 65536),
    shared: true,
  });
  const offset = 65536;
  const src = new Uint8Array(source.buffer, offset, pages * PAGE);
  const dst = new Uint8Array(copy.buffer, 0, pages * PAGE);
  const differ = pageSync(source, copy);
  const seen: number[] = [];
  assert.equal(differ.diffCopy(offset, 0, pages, (i) => seen.push(i)), 0);
  // One byte anywhere in a page (first, last, middle) makes it differ; page 299 is the last.
  const writes = [[0, 0], [7, 4095], [8, 1], [150, 2048], [299, 4095], [299, 0]];
  for (const [page, at] of writes) src[page * PAGE + at] = 0xa5 ^ at;
  assert.equal(differ.diffCopy(offset, 0, pages, (i) => seen.push(i)), 5);
  assert.deepEqual(seen, [0, 7, 8, 150, 299]);
  assert.deepEqual(dst, src);
  // Equal again: nothing more to copy.
  assert.equal(differ.diffCopy(offset, 0, pages, () => assert.fail("no page differs")), 0);
  // A sub-range: only pages inside it are looked at, indices relative to it.
  src[10 * PAGE + 5] ^= 1;
  src[20 * PAGE + 5] ^= 1;
  const sub: number[] = [];
  assert.equal(differ.diffCopy(offset + 15 * PAGE, 15 * PAGE, 10, (i) => sub.push(i)), 1);
  assert.deepEqual(sub, [5]);
  assert.equal(dst[10 * PAGE + 5], 0);
});
