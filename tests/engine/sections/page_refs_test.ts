import assert from "node:assert/strict";
import { PageRefs } from "../../../engine/sections/page_refs.ts";

Deno.test("PageRefs: a page sent with data is a candidate under its digest; nothing else is", () => {
  const refs = new PageRefs(1000);
  assert.equal(refs.candidate(0xdead), -1);
  refs.sentData(7, 0xdead);
  assert.equal(refs.candidate(0xdead), 7);
  assert.equal(refs.candidate(0xbeef), -1);
  assert.equal(refs.isEligible(7), true);
});

Deno.test("PageRefs: a page sent again as ZERO or as a reference stops being a candidate", () => {
  const refs = new PageRefs(64);
  refs.sentData(3, 1);
  refs.sentOther(3);
  assert.equal(refs.candidate(1), -1);
  refs.sentData(3, 1);
  assert.equal(refs.candidate(1), 3);
});

Deno.test("PageRefs.sentOtherWord(): a word of pages sent as ZERO stops being candidates", () => {
  const refs = new PageRefs(64);
  refs.sentData(33, 1);
  refs.sentData(3, 2);
  refs.sentOtherWord(1);
  assert.equal(refs.candidate(1), -1);
  assert.equal(refs.candidate(2), 3);
});

Deno.test("PageRefs: the latest page sent under a digest is the candidate", () => {
  const refs = new PageRefs(64);
  refs.sentData(3, 42);
  refs.sentData(9, 42);
  assert.equal(refs.candidate(42), 9);
});

Deno.test("PageRefs: many digests colliding on one slot stay bounded and findable while eligible", () => {
  const refs = new PageRefs(16); // 32 slots
  for (let p = 0; p < 16; p++) refs.sentData(p, p * 1000 + 1);
  let found = 0;
  for (let p = 0; p < 16; p++) if (refs.candidate(p * 1000 + 1) === p) found++;
  assert.ok(found >= 12, `${found} of 16 found`);
  assert.ok(refs.bytes < 1024);
});

Deno.test("PageRefs.redirtyReferrers(): a target dirtied after references marks its referrers dirty, once", () => {
  const refs = new PageRefs(64);
  refs.sentData(5, 9);
  refs.referenced(20, 5);
  refs.referenced(40, 5);
  const bitmap = new Uint32Array(2);
  assert.equal(refs.redirtyReferrers(bitmap), 0, "target clean: nothing to do");
  assert.equal(refs.targets, 1);
  bitmap[0] |= 1 << 5; // the sync found page 5 dirty
  assert.equal(refs.redirtyReferrers(bitmap), 2);
  assert.equal(bitmap[0], (1 << 5) | (1 << 20));
  assert.equal(bitmap[1], 1 << 8);
  assert.equal(refs.targets, 0);
  assert.equal(refs.redirtyReferrers(bitmap), 0, "forgotten once handled");
});

Deno.test("PageRefs.redirtyReferrers(): a referrer already dirty is not counted twice", () => {
  const refs = new PageRefs(64);
  refs.referenced(2, 1);
  const bitmap = Uint32Array.of((1 << 1) | (1 << 2), 0);
  assert.equal(refs.redirtyReferrers(bitmap), 0);
});
