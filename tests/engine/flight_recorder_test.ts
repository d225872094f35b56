import assert from "node:assert/strict";
import type { MigrationInfo } from "../../engine/contract.ts";
import { explain, FlightRecorder, MAX_WINDOWS } from "../../engine/flight_recorder.ts";
import { PAGE_SIZE } from "../../engine/format/constants.ts";

/** A window sample with `remaining` left, `bandwidth` bytes/ms. */
function sample(over: Partial<Parameters<FlightRecorder["window"]>[1]> = {}) {
  return {
    bytes: 1_000_000,
    ms: 100,
    bandwidth: 10_000,
    totalBytes: 0,
    pagesSent: 0,
    maxSize: 300_000,
    remaining: 50 << 20,
    expectedDowntime: Infinity,
    throttle: 0,
    pass: 1,
    ...over,
  };
}

Deno.test("FlightRecorder: each window keeps bytes, pages, dirty pages, bandwidth, max_size, expected downtime, throttle and pass", () => {
  const r = new FlightRecorder("id-1", 5000);
  r.window(5100, sample({ totalBytes: 1e6, pagesSent: 200 }));
  r.pass(5150, 2, 64, 1.5e6);
  r.event(5150, "throttle", "20");
  r.window(
    5200,
    sample({ totalBytes: 2e6, pagesSent: 450, throttle: 20, pass: 2, expectedDowntime: 41.6 }),
  );
  const tl = r.timeline();
  assert.equal(tl.id, "id-1");
  assert.deepEqual(tl.windows[1], {
    t: 200,
    bytes: 1_000_000,
    total_bytes: 2e6,
    pages: 250,
    dirty_pages: 64,
    dirty_rate: Math.round(64 * PAGE_SIZE * 1000 / 150),
    bandwidth: 10_000_000,
    max_size: 300_000,
    remaining: 50 << 20,
    expected_downtime: 42,
    throttle: 20,
    pass: 2,
  });
  assert.equal(tl.windows[0].expected_downtime, -1, "unknown is -1");
  assert.equal(tl.windows[0].dirty_pages, 0);
  assert.deepEqual(tl.passes, [{
    pass: 2,
    t: 150,
    dirty_pages: 64,
    dirty_rate: Math.round(64 * PAGE_SIZE * 1000 / 150),
    bandwidth: 10_000_000,
  }]);
  assert.deepEqual(tl.events, [{ t: 150, kind: "throttle", text: "20" }]);
  assert.equal(r.maxThrottle, 20);
});

Deno.test("FlightRecorder: keeps at most MAX_WINDOWS windows, dropping the oldest and counting them", () => {
  const r = new FlightRecorder("id", 0);
  for (let i = 1; i <= MAX_WINDOWS + 5; i++) r.window(i * 100, sample());
  const tl = r.timeline();
  assert.equal(tl.windows.length, MAX_WINDOWS);
  assert.equal(tl.dropped_windows, 5);
  assert.equal(tl.windows[0].t, 600);
});

/** A recorder fed `passes` of [dirty MB/s, link MB/s], one per second. */
function recorded(passes: [number, number][], remaining: number[]) {
  const r = new FlightRecorder("id", 0);
  let bytes = 0;
  passes.forEach(([dirty, link], i) => {
    bytes += link * 1e6;
    r.pass((i + 1) * 1000, i + 1, Math.round(dirty * 1e6 / PAGE_SIZE), bytes);
  });
  remaining.forEach((left, i) =>
    r.window((i + 1) * 100, sample({ remaining: left, bandwidth: 100_000, maxSize: 3e6 }))
  );
  return r.timeline();
}

Deno.test("explain(): a migration the guest outran names the dirty rate, the link and the pass from which on", () => {
  const tl = recorded([[20, 100], [60, 100], [210, 100], [215, 100], [205, 100]], [9e7, 9e7]);
  const info: MigrationInfo = {
    status: "failed",
    total_time: 5000,
    error_desc: "Migration stalled",
  };
  const e = explain(info, tl, 300);
  assert.match(
    e.convergence,
    /^It failed after 5\.0 s: Migration stalled; it could not have converged: dirty rate 210 MB\/s exceeded the 100 MB\/s link from pass 3 on$/,
  );
  assert.equal(e.downtime, "No downtime: the guest runs on here");
});

Deno.test("explain(): a converged migration says at which pass, what fit max_size, and that the downtime stayed within the limit", () => {
  const tl = recorded([[5, 100], [4, 100]], [8e7, 2e6]);
  const info: MigrationInfo = { status: "completed", total_time: 2100, downtime: 21.4 };
  const e = explain(info, tl, 30);
  assert.match(
    e.convergence,
    /^It converged at pass 2 after 2\.1 s: 1\.9 MiB left fit max_size 2\.9 MiB/,
  );
  assert.match(e.convergence, /the guest dirtied 4\.5 MB\/s against a 100 MB\/s link$/);
  assert.match(e.downtime, /^The downtime \(21 ms\) stayed within downtime_limit \(30 ms\)/);
});

Deno.test("explain(): a switchover forced by the deadline, and a downtime over the limit, say so", () => {
  const tl = recorded([[100, 100], [99, 100], [100, 100]], [9e7]);
  const info: MigrationInfo = {
    status: "completed",
    total_time: 3000,
    downtime: 180,
    warnings: [
      { code: "completion-timeout-switchover", message: "…" },
      {
        code: "downtime-limit-exceeded",
        message: "The downtime (180 ms) exceeded downtime_limit (30 ms): …",
      },
    ],
  };
  const e = explain(info, tl, 30);
  assert.match(
    e.convergence,
    /^It did not converge by itself \(dirty rate 100 MB\/s kept up with the 100 MB\/s link from pass 1 on\): the completion deadline forced the switchover after 3\.0 s$/,
  );
  assert.match(e.downtime, /^The downtime \(180 ms\) exceeded downtime_limit \(30 ms\)/);
});

Deno.test("explain(): while running, a shrinking backlog gives the time it still needs", () => {
  const windows = Array.from({ length: 11 }, (_, i) => 50e6 - i * 1e6);
  const e = explain({ status: "active", total_time: 1100 }, recorded([[1, 100]], windows), 30);
  assert.match(
    e.convergence,
    /^Not converged yet: what was left \(38\.1 MiB\) was shrinking by 10 MB\/s; at that pace it needed 3\.7 s more$/,
  );
  assert.match(e.downtime, /^No downtime yet/);
});
