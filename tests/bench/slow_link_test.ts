import assert from "node:assert/strict";
import { ferryRun, parseRates, qemuWorkload, type SlowLinkRow } from "../../bench/slow_link.ts";

Deno.test("bench:link --rate: rates in bits/s from 1g, 10g, 500m or 1e9; nonsense and sub-Mbit rates refused", () => {
  assert.deepEqual(parseRates("1g,10g"), [1e9, 10e9]);
  assert.deepEqual(parseRates("500m, 1e9, 2.5gbit"), [500e6, 1e9, 2.5e9]);
  assert.throws(() => parseRates("fast"), /"fast" is not a rate/);
  assert.throws(() => parseRates("10k"), /below 1 Mbit\/s/);
});

Deno.test("bench:link: ferry's --workload as QEMU's guest plays it", () => {
  assert.deepEqual(qemuWorkload("random:rate=50M"), {
    kind: "dirty",
    bytesPerSecond: 50 * 2 ** 20,
  });
  assert.deepEqual(qemuWorkload("idle"), { kind: "idle" });
  assert.deepEqual(qemuWorkload("ab:range=64M"), { kind: "ab", rangeBytes: 64 * 2 ** 20 });
  assert.throws(() => qemuWorkload("ab"), /range/);
  assert.throws(() => qemuWorkload("spin"), /unknown kind/);
});

Deno.test("bench:link: a ferry row becomes the engine-neutral run of the comparison tables", () => {
  const row = {
    case: { name: "unlimited, 30 ms", maxBandwidth: 100e9, downtimeLimit: 30 },
    run: 0,
    status: "completed",
    totalTimeMs: 4100,
    transferred: 432 * 2 ** 20,
    passes: 14,
    estimateMedianMbps: 936,
    estimateFinalMbps: 880,
    wireMbps: 886,
    estOverWire: 1.06,
    expectedDowntimeMs: 20,
    downtimeMs: 28.5,
    eventDowntimeMs: 35,
    digestsMatch: true,
    wallMs: 4150,
    warnings: [],
    samples: [],
  } satisfies SlowLinkRow;
  const r = ferryRun(row);
  assert.equal(r.completed, true);
  assert.equal(r.totalS, 4.1);
  assert.equal(r.wallS, 4.15);
  assert.equal(r.downtimeMs, 28.5);
  assert.equal(r.bandwidthBps, 110e6);
  assert.equal(ferryRun({ ...row, status: "failed", downtimeMs: undefined }).completed, false);
  assert.ok(Number.isNaN(ferryRun({ ...row, downtimeMs: undefined }).downtimeMs));
});
