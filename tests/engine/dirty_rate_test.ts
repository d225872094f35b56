import assert from "node:assert/strict";
import { DirtyRateMeter, SAMPLE_MS, workingSetCurve } from "../../engine/dirty_rate.ts";
import { EngineError } from "../../engine/errors.ts";
import type { DirtyRateInfo } from "../../engine/plan_contract.ts";
import { DirtyRateInfoSchema } from "../../engine/plan_contract.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { TestGuest } from "../../testing/test_guest.ts";

/**
 * A guest whose writer runs on the fake clock: at every sync of its dirty log
 * (the block's refresh hook, as the x86 guest's copy works) it marks the pages
 * `pagesAt(sample)` for every 100 ms sample that passed since the last one.
 */
function clockedGuest(clock: FakeClock, pages: number, pagesAt: (sample: number) => number[]) {
  const guest = new TestGuest([["pc.ram", pages * PAGE_SIZE]]);
  let done = 0;
  guest.blocks[0].setRefresh(() => {
    const now = Math.floor(clock.now() / SAMPLE_MS);
    for (; done < now; done++) for (const p of pagesAt(done)) guest.blocks[0].markDirty(p);
  });
  return guest;
}

Deno.test("DirtyRateMeter: a guest rewriting the same 10 pages has a working set of 10 pages at every window", async () => {
  const clock = new FakeClock();
  const guest = clockedGuest(clock, 1024, () => [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const meter = new DirtyRateMeter({ guest, clock, busy: () => null });
  const started = meter.start(1000);
  assert.equal(started.status, "measuring");
  await meter.done;
  const info = meter.info();
  assert.ok(DirtyRateInfoSchema.safeParse(info).success);
  assert.equal(info.status, "measured");
  assert.equal(info.duration_ms, 1000);
  assert.equal(info.pages_per_second, 100, "10 distinct pages per 100 ms");
  assert.equal(info.mib_per_second, Math.round(100 * PAGE_SIZE / 2 ** 20 * 100) / 100);
  assert.equal(info.distinct_pages, 10);
  assert.deepEqual(info.working_set!.map((w) => [w.window_ms, w.samples, w.pages]), [
    [100, 10, 10],
    [200, 5, 10],
    [500, 2, 10],
    [1000, 1, 10],
  ]);
});

Deno.test("DirtyRateMeter: a guest writing 10 new pages each 100 ms has a working set growing with the window", async () => {
  const clock = new FakeClock();
  const guest = clockedGuest(clock, 4096, (s) => Array.from({ length: 10 }, (_, i) => s * 10 + i));
  const meter = new DirtyRateMeter({ guest, clock, busy: () => null });
  meter.start(2500); // 25 samples: windows up to 2 s
  await meter.done;
  const info = meter.info();
  assert.equal(info.pages_per_second, 100);
  assert.equal(info.distinct_pages, 250);
  assert.deepEqual(info.working_set!.map((w) => [w.window_ms, w.samples, w.pages, w.max_pages]), [
    [100, 25, 10, 10],
    [200, 12, 20, 20],
    [500, 5, 50, 50],
    [1000, 2, 100, 100],
    [2000, 1, 200, 200],
  ]);
  assert.equal(info.calc_time_ms, 2500);
});

Deno.test("DirtyRateMeter refuses to start beside a migration or another measurement (migration-active)", async () => {
  const clock = new FakeClock();
  const guest = new TestGuest([["pc.ram", 64 * PAGE_SIZE]]);
  let busy: string | null = "a migration is active";
  const meter = new DirtyRateMeter({ guest, clock, busy: () => busy });
  guest.blocks[0].markDirty(3);
  assert.throws(() => meter.start(500), (e) => {
    assert.ok(e instanceof EngineError);
    assert.equal(e.code, "migration-active");
    assert.match(e.message, /a migration is active/);
    return true;
  });
  assert.equal(guest.blocks[0].dirty[0], 1 << 3, "the dirty log was not touched");
  assert.equal(meter.info().status, "none");
  busy = null;
  meter.start(500);
  assert.throws(() => meter.start(500), /already running/);
  await meter.done;
  assert.equal(meter.info().status, "measured");
});

Deno.test("DirtyRateMeter: a migration that starts meanwhile cancels it before its next sync, leaving the dirty log to the migration", async () => {
  const clock = new FakeClock();
  let busy: string | null = null;
  const guest = clockedGuest(clock, 1024, (s) => [s]);
  const meter = new DirtyRateMeter({ guest, clock, busy: () => busy });
  meter.start(1000);
  // Let the first samples pass, then have the migration start before a sync sees it.
  while (clock.now() < 300) await new Promise((r) => setTimeout(r, 0));
  busy = "a migration is active";
  guest.blocks[0].markDirty(500);
  await meter.done;
  const info = meter.info();
  assert.equal(info.status, "cancelled");
  assert.match(info.error_desc!, /a migration is active/);
  assert.ok(info.duration_ms! < 1000);
  assert.equal(guest.blocks[0].dirty[500 >>> 5] & (1 << (500 & 31)), 1 << (500 & 31), "not synced");
  assert.equal(meter.cancel(), false, "nothing left to cancel");
});

function measured(points: [number, number][], total: number, extra: Partial<DirtyRateInfo> = {}) {
  return {
    status: "measured",
    page_size: PAGE_SIZE,
    total_pages: total,
    duration_ms: points.at(-1)![0],
    working_set: points.map(([w, p]) => ({
      window_ms: w,
      samples: 1,
      pages: p,
      max_pages: p,
      mib: 0,
    })),
    ...extra,
  } satisfies DirtyRateInfo;
}

Deno.test("workingSetCurve interpolates between the measured windows", () => {
  const curve = workingSetCurve(measured([[100, 10], [200, 18], [500, 40], [1000, 70]], 10_000));
  assert.equal(curve(0), 0);
  assert.equal(curve(50), 5);
  assert.equal(curve(100), 10);
  assert.equal(curve(150), 14);
  assert.equal(curve(750), 55);
  assert.equal(curve(1000), 70);
});

Deno.test("workingSetCurve beyond the longest window: keeps the last slope at first, never exceeds RAM, and a set that stopped growing stays flat", () => {
  const growing = workingSetCurve(measured([[500, 500], [1000, 1000]], 4096));
  assert.ok(Math.abs(growing(1010) - 1010) < 1, "the last slope continues");
  let last = 1000;
  for (const t of [2000, 5000, 20_000, 100_000]) {
    const d = growing(t);
    assert.ok(d > last && d <= 4096, `${t} ms: ${d}`);
    last = d;
  }
  assert.ok(growing(1e7) > 4095);
  const flat = workingSetCurve(measured([[500, 300], [1000, 300]], 4096));
  assert.equal(flat(60_000), 300);
});

Deno.test("workingSetCurve with only a rate: a uniform writer over RAM", () => {
  const curve = workingSetCurve({
    status: "measured",
    page_size: PAGE_SIZE,
    total_pages: 1000,
    pages_per_second: 100,
  });
  assert.ok(Math.abs(curve(100) - 10) < 0.1);
  assert.ok(curve(1e6) <= 1000);
});

Deno.test("DirtyRateMeter predicts XBZRLE's bytes per re-sent page from the deltas of sampled pages", async () => {
  const clock = new FakeClock();
  const guest = new TestGuest([["pc.ram", 64 * PAGE_SIZE]]);
  const block = guest.blocks[0];
  let done = 0;
  block.setRefresh(() => {
    for (; done < Math.floor(clock.now() / SAMPLE_MS); done++) {
      // Pages 0-7 get 8 new bytes at their start each sample.
      for (let p = 0; p < 8; p++) {
        block.bytes.fill(done + 1, p * PAGE_SIZE, p * PAGE_SIZE + 8);
        block.markDirty(p);
      }
    }
  });
  const meter = new DirtyRateMeter({ guest, clock, busy: () => null });
  meter.start(2000);
  await meter.done;
  const xb = meter.info().xbzrle!;
  // Two periods of 1 s, each finding the 8 pages changed: an empty unchanged run, a
  // changed run of 8 and its bytes (10 bytes), after an 11-byte record header.
  assert.equal(xb.sampled_pages, 16);
  assert.equal(xb.bytes_per_page, 21);
  assert.equal(xb.ratio, Math.round(4104 / 21 * 100) / 100);
});
