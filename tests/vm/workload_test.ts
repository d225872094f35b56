import assert from "node:assert/strict";
import {
  assertWorkloadFits,
  formatSize,
  formatWorkload,
  parseWorkload,
  WORKLOAD_DEFAULTS,
  WorkloadError,
  type WorkloadSpec,
} from "../../vm/workload.ts";

const M = 2 ** 20;

Deno.test("parseWorkload reads idle", () => {
  assert.deepEqual(parseWorkload("idle"), { kind: "idle" });
  assert.deepEqual(parseWorkload("  idle "), { kind: "idle" });
});

Deno.test("parseWorkload reads ab with defaults: unlimited rate, whole block", () => {
  assert.deepEqual(parseWorkload("ab"), { kind: "ab", rate: 0, range: null });
});

Deno.test("parseWorkload reads ab rate and range as binary sizes", () => {
  assert.deepEqual(parseWorkload("ab:rate=10M,range=256M"), {
    kind: "ab",
    rate: 10 * M,
    range: 256 * M,
  });
  assert.deepEqual(parseWorkload("ab:range=8K"), { kind: "ab", rate: 0, range: 8192 });
  assert.deepEqual(parseWorkload("ab:rate=0"), { kind: "ab", rate: 0, range: null });
});

Deno.test("parseWorkload reads random with defaults: 50M/s, no hot set, 8 bytes", () => {
  assert.deepEqual(parseWorkload("random"), {
    kind: "random",
    rate: WORKLOAD_DEFAULTS.randomRate,
    hot: null,
    bytes: 8,
  });
  assert.equal(WORKLOAD_DEFAULTS.randomRate, 50 * M);
});

Deno.test("parseWorkload reads random rate, hot set and bytes in any order", () => {
  const expected: WorkloadSpec = {
    kind: "random",
    rate: 100 * M,
    hot: { pagesPercent: 10, opsPercent: 90 },
    bytes: 4096,
  };
  assert.deepEqual(parseWorkload("random:rate=100M,hot=10%:90%,bytes=4096"), expected);
  assert.deepEqual(parseWorkload("random:bytes=4096,hot=10%:90%,rate=100M"), expected);
  assert.deepEqual(parseWorkload("random:hot=100%:0%,bytes=1"), {
    kind: "random",
    rate: 50 * M,
    hot: { pagesPercent: 100, opsPercent: 0 },
    bytes: 1,
  });
});

Deno.test("formatWorkload writes canonical text that parses back to the same spec", () => {
  const cases: [string, string][] = [
    ["idle", "idle"],
    ["ab", "ab"],
    ["ab:rate=0", "ab"],
    ["ab:range=1048576,rate=4096", "ab:rate=4K,range=1M"],
    ["ab:rate=1.5M", "ab:rate=1536K"],
    ["random", "random"],
    ["random:rate=50M,bytes=8", "random"],
    ["random:bytes=64,rate=1G,hot=5%:95%", "random:rate=1G,hot=5%:95%,bytes=64"],
    ["random:rate=0", "random:rate=0"],
    ["random:rate=1000", "random:rate=1000"],
  ];
  for (const [text, canonical] of cases) {
    const spec = parseWorkload(text);
    assert.equal(formatWorkload(spec), canonical, text);
    assert.deepEqual(parseWorkload(formatWorkload(spec)), spec, text);
  }
});

Deno.test("formatSize uses the largest exact binary unit", () => {
  assert.equal(formatSize(0), "0");
  assert.equal(formatSize(1000), "1000");
  assert.equal(formatSize(4096), "4K");
  assert.equal(formatSize(1536 * 1024), "1536K");
  assert.equal(formatSize(50 * M), "50M");
  assert.equal(formatSize(2 ** 30), "1G");
  assert.equal(formatSize(3 * 2 ** 40), "3T");
});

Deno.test("parseWorkload rejects each malformed spec with a WorkloadError naming the problem", () => {
  const cases: [string, RegExp][] = [
    ["", /it is empty/],
    ["busy", /unknown kind "busy"/],
    ["AB", /unknown kind "AB"/],
    ["idle:rate=1M", /idle takes no parameters/],
    ["ab:", /empty parameter list/],
    ["ab:rate", /parameter "rate" is not key=value/],
    ["ab:=5", /parameter "=5" is not key=value/],
    ["ab:rate=1M,,range=4K", /parameter "" is not key=value/],
    ["ab:hot=10%:90%", /unknown parameter "hot" for ab \(expected rate, range\)/],
    ["random:range=4K", /unknown parameter "range" for random/],
    ["ab:rate=1M,rate=2M", /parameter "rate" is given twice/],
    ["random:rate=x", /^Invalid workload "random:rate=x": rate "x" is not a size$/],
    ["ab:range=lots", /range "lots" is not a size/],
    ["ab:range=1000", /range must be a positive multiple of 4096 bytes, got 1000/],
    ["ab:range=0", /range must be a positive multiple of 4096/],
    ["random:hot=10%", /hot "10%" is not P%:Q%/],
    ["random:hot=0%:90%", /hot "0%:90%" is not P%:Q% with P in 1..100/],
    ["random:hot=10%:101%", /hot "10%:101%"/],
    ["random:hot=10:90", /hot "10:90"/],
    ["random:bytes=0", /bytes "0" is not an integer in 1..4096/],
    ["random:bytes=4097", /bytes "4097"/],
    ["random:bytes=8.5", /bytes "8.5"/],
    ["random:bytes=-1", /bytes "-1"/],
  ];
  for (const [text, message] of cases) {
    assert.throws(
      () => parseWorkload(text),
      (error: unknown) => {
        assert.ok(error instanceof WorkloadError, `${text}: ${error}`);
        assert.equal(error.name, "WorkloadError");
        assert.match(error.message, message, text);
        assert.ok(!error.message.includes("\n"), "one line");
        return true;
      },
    );
  }
});

Deno.test("assertWorkloadFits accepts specs that fit and rejects an ab range beyond RAM", () => {
  assertWorkloadFits(parseWorkload("ab:range=1M"), M);
  assertWorkloadFits(parseWorkload("random:hot=10%:90%"), 4096);
  assertWorkloadFits({ kind: "idle" }, 4096);
  assert.throws(
    () => assertWorkloadFits(parseWorkload("ab:range=2M"), M),
    /Workload "ab:range=2M" cannot run: range 2097152 exceeds the RAM block of 1048576 bytes/,
  );
});

Deno.test("assertWorkloadFits rejects hand-built specs parseWorkload would never produce", () => {
  const bad: WorkloadSpec[] = [
    { kind: "ab", rate: -1, range: null },
    { kind: "ab", rate: 0, range: 100 },
    { kind: "random", rate: 0, hot: null, bytes: 0 },
    { kind: "random", rate: 1.5, hot: null, bytes: 8 },
    { kind: "random", rate: 0, hot: { pagesPercent: 0, opsPercent: 50 }, bytes: 8 },
  ];
  for (const spec of bad) {
    assert.throws(() => assertWorkloadFits(spec, M), WorkloadError, JSON.stringify(spec));
  }
});
