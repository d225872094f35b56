import assert from "node:assert/strict";
import { CompressionGate, MIN_RATIO, PROBE_EVERY } from "../../engine/compress_gate.ts";

/** One window: if it compresses, `raw` bytes went in and `raw / ratio` out in `ms`; the wire carried `bandwidth`. */
function window(
  gate: CompressionGate,
  o: { rate: number; ratio: number; bandwidth: number; limit?: number },
): boolean {
  const was = gate.active;
  if (was) gate.measured(o.rate * 50, (o.rate * 50) / o.ratio, 50);
  gate.endWindow(o.bandwidth, o.limit ?? Infinity);
  return was;
}

Deno.test("CompressionGate: the first window compresses, to measure the compressor", () => {
  const gate = new CompressionGate();
  assert.equal(gate.active, true);
  assert.ok(Number.isNaN(gate.state.compressorRate));
});

Deno.test("CompressionGate: without a rate limit, a plain window measures the link before deciding", () => {
  const gate = new CompressionGate();
  // Compressor 400 bytes/ms; the compressed window carried 100 bytes/ms (a lower bound of the link).
  window(gate, { rate: 400, ratio: 4, bandwidth: 100 });
  assert.equal(gate.active, false, "the link was never measured plainly");
  assert.equal(gate.state.compressorRate, 400);
  // The plain window shows a 1500 bytes/ms link: faster than the compressor.
  window(gate, { rate: 400, ratio: 4, bandwidth: 1500 });
  assert.equal(gate.active, false);
  assert.equal(gate.state.linkRate, 1500);
  assert.equal(gate.state.skippedWindows, 1);
});

Deno.test("CompressionGate: a link slower than the compressor keeps compression on", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 4, bandwidth: 30 });
  window(gate, { rate: 400, ratio: 4, bandwidth: 120 }); // plain: the link carries 120 bytes/ms
  assert.equal(gate.active, true);
  for (let i = 0; i < PROBE_EVERY - 1; i++) {
    window(gate, { rate: 400, ratio: 4, bandwidth: 30 });
    assert.equal(gate.active, true, `window ${i}`);
  }
});

Deno.test("CompressionGate: a rate limit below the compressor's intake compresses without a plain probe", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 3, bandwidth: 100, limit: 125 });
  assert.equal(gate.active, true);
});

Deno.test("CompressionGate: a rate limit above the compressor's intake still measures the link", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 3, bandwidth: 100, limit: 1000 });
  assert.equal(gate.active, false);
  window(gate, { rate: 400, ratio: 3, bandwidth: 300, limit: 1000 }); // the link is slower
  assert.equal(gate.active, true);
});

Deno.test("CompressionGate: pages that do not compress turn it off, however slow the link", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: MIN_RATIO - 0.01, bandwidth: 10, limit: 10 });
  assert.equal(gate.active, false);
});

Deno.test("CompressionGate: every PROBE_EVERY windows the other choice is tried once, then fresh numbers decide", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 4, bandwidth: 100 });
  window(gate, { rate: 400, ratio: 4, bandwidth: 2000 }); // plain: off
  const seen: boolean[] = [];
  for (let i = 0; i < PROBE_EVERY + 2; i++) {
    seen.push(window(gate, { rate: 400, ratio: 4, bandwidth: 2000 }));
  }
  assert.deepEqual(seen.filter((x) => x).length, 1, `one probe window compressed: ${seen}`);
  assert.equal(gate.active, false);
  // The link slows down to 100 bytes/ms: the next probe finds the compressor faster.
  const after: boolean[] = [];
  for (let i = 0; i < PROBE_EVERY + 2; i++) {
    after.push(window(gate, { rate: 400, ratio: 4, bandwidth: 100 }));
  }
  assert.equal(gate.active, true, `${after}`);
});

Deno.test("CompressionGate: a compressing window faster than the link estimate raises it", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 4, bandwidth: 10 });
  window(gate, { rate: 400, ratio: 4, bandwidth: 50 }); // plain: 50
  assert.equal(gate.active, true);
  window(gate, { rate: 400, ratio: 4, bandwidth: 80 });
  assert.equal(gate.state.linkRate, 80);
});

Deno.test("CompressionGate: a compressor too fast for the clock to measure counts as infinitely fast", () => {
  const gate = new CompressionGate();
  gate.measured(1 << 20, 1 << 18, 0);
  gate.endWindow(100, 200);
  assert.equal(gate.state.compressorRate, Infinity);
  assert.equal(gate.active, true);
});
