import assert from "node:assert/strict";
import {
  CompressionGate,
  MIN_RATIO,
  PROBE_EVERY,
  SAMPLE_EVERY,
} from "../../engine/compress_gate.ts";

/**
 * One window of `runs` runs offered to the gate: each one it compresses took
 * 128 KiB in at `rate` bytes/ms and gave `ratio`; the wire carried `bandwidth`.
 * Returns how many runs it compressed.
 */
function window(
  gate: CompressionGate,
  o: { rate: number; ratio: number; bandwidth: number; limit?: number; runs?: number },
): number {
  let compressed = 0;
  for (let i = 0; i < (o.runs ?? 64); i++) {
    if (!gate.compressNext()) continue;
    compressed++;
    gate.measured(131072, 131072 / o.ratio, 131072 / o.rate);
  }
  gate.endWindow(o.bandwidth, o.limit ?? Infinity);
  return compressed;
}

Deno.test("CompressionGate: the first window sends plainly, compressing one run in SAMPLE_EVERY", () => {
  const gate = new CompressionGate();
  assert.equal(gate.active, false);
  assert.equal(window(gate, { rate: 400, ratio: 3, bandwidth: 1500 }), 64 / SAMPLE_EVERY);
  assert.equal(gate.state.compressorRate, 400);
  assert.equal(gate.state.linkRate, 1500);
  assert.equal(gate.active, false, "the link (1500 bytes/ms) is faster than the compressor");
  assert.equal(gate.state.skippedWindows, 1);
});

Deno.test("CompressionGate: a link slower than the compressor turns compression on for every run", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 3, bandwidth: 120 });
  assert.equal(gate.active, true);
  assert.equal(window(gate, { rate: 400, ratio: 3, bandwidth: 40 }), 64);
  assert.equal(gate.active, true);
  assert.equal(gate.state.linkRate, 120, "a compressing window only raises the estimate");
});

Deno.test("CompressionGate: a rate limit below the compressor's intake keeps it on", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 3, bandwidth: 5000, limit: 125 });
  assert.equal(gate.active, true);
});

Deno.test("CompressionGate: pages that do not compress keep it off, however slow the link", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: MIN_RATIO - 0.01, bandwidth: 10, limit: 10 });
  assert.equal(gate.active, false);
  assert.equal(
    window(gate, { rate: 400, ratio: 1, bandwidth: 10, limit: 10 }),
    4,
    "still sampling",
  );
});

Deno.test("CompressionGate: a window without any run to sample keeps the last decision's numbers", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 3, bandwidth: 100, runs: 0 });
  assert.equal(gate.active, false, "nothing measured: nothing to compress for");
  window(gate, { rate: 400, ratio: 3, bandwidth: 100 });
  assert.equal(gate.active, true);
  window(gate, { rate: 400, ratio: 3, bandwidth: 100, runs: 0 });
  assert.equal(gate.active, true);
});

Deno.test("CompressionGate: every PROBE_EVERY compressing windows, one goes plain to measure the link", () => {
  const gate = new CompressionGate();
  window(gate, { rate: 400, ratio: 3, bandwidth: 100 });
  const seen: boolean[] = [];
  for (let i = 0; i < 2 * PROBE_EVERY + 2; i++) {
    seen.push(gate.active);
    window(gate, { rate: 400, ratio: 3, bandwidth: gate.active ? 60 : 100 });
  }
  assert.equal(seen.filter((x) => !x).length, 2, `${seen}`);
  assert.equal(seen[PROBE_EVERY], false);
  // The link turns fast: the next probe finds it faster than the compressor.
  for (let i = 0; i < PROBE_EVERY + 1; i++) {
    window(gate, { rate: 400, ratio: 3, bandwidth: gate.active ? 60 : 5000 });
  }
  assert.equal(gate.active, false);
  assert.equal(gate.state.linkRate, 5000);
});

Deno.test("CompressionGate: a compressor too fast for the clock to measure counts as infinitely fast", () => {
  const gate = new CompressionGate();
  assert.equal(gate.compressNext(), true);
  gate.measured(1 << 17, 1 << 15, 0);
  gate.endWindow(100, 200);
  assert.equal(gate.state.compressorRate, Infinity);
  assert.equal(gate.active, true);
});

Deno.test("CompressionGate(true) compresses every run from the first window", () => {
  const gate = new CompressionGate(true);
  assert.equal(gate.active, true);
  for (let i = 0; i < 40; i++) assert.equal(gate.compressNext(), true);
});
