import assert from "node:assert/strict";
import { CACHED_PAGE_LIFETIME, PageCache } from "../../../engine/sections/page_cache.ts";

const PAGE = 4096;

Deno.test("PageCache rounds its size down to a power of two of pages", () => {
  const cache = new PageCache(5 * PAGE + 100);
  assert.equal(cache.slots, 4);
  assert.equal(cache.sizeBytes, 4 * PAGE);
});

Deno.test("PageCache.lookup() finds an inserted copy, not the original buffer", () => {
  const cache = new PageCache(16 * PAGE);
  const page = new Uint8Array(PAGE).fill(7);
  assert.equal(cache.lookup(3), null);
  assert.ok(cache.insert(3, page, 1));
  page.fill(9);
  assert.deepEqual(cache.lookup(3), new Uint8Array(PAGE).fill(7));
  assert.equal(cache.lookup(3 + 16), null, "another page mapping to the same slot is a miss");
});

Deno.test("PageCache.insert() keeps a fresh page and replaces an old one", () => {
  const cache = new PageCache(4 * PAGE);
  assert.ok(cache.insert(1, new Uint8Array(PAGE).fill(1), 10));
  assert.equal(cache.insert(5, new Uint8Array(PAGE).fill(5), 10 + CACHED_PAGE_LIFETIME - 1), false);
  assert.deepEqual(cache.lookup(1)![0], 1);
  assert.ok(cache.insert(5, new Uint8Array(PAGE).fill(5), 10 + CACHED_PAGE_LIFETIME));
  assert.equal(cache.lookup(1), null);
  assert.equal(cache.lookup(5)![0], 5);
  assert.ok(
    cache.insert(5, new Uint8Array(PAGE).fill(6), 10 + CACHED_PAGE_LIFETIME),
    "same page updates",
  );
  assert.equal(cache.lookup(5)![0], 6);
});

Deno.test("PageCache.resized() keeps pages that still fit", () => {
  const cache = new PageCache(8 * PAGE);
  for (let k = 0; k < 8; k++) cache.insert(k, new Uint8Array(PAGE).fill(k + 1), 0);
  const bigger = cache.resized(16 * PAGE);
  assert.equal(bigger.slots, 16);
  for (let k = 0; k < 8; k++) assert.equal(bigger.lookup(k)![0], k + 1);
  const smaller = cache.resized(2 * PAGE);
  assert.equal(smaller.slots, 2);
  assert.equal(smaller.lookup(0)![0], 1);
  assert.equal(smaller.lookup(1)![0], 2);
  assert.equal(smaller.lookup(2), null);
});
