import assert from "node:assert/strict";
import { StreamWriter } from "../../engine/format/writer.ts";
import {
  createSavers,
  type OutgoingContext,
  runPrecopy,
  writeSetup,
} from "../../engine/outgoing.ts";
import { DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS, type Parameters } from "../../engine/params.ts";
import type { DirtyRateInfo } from "../../engine/plan_contract.ts";
import { PlanSchema } from "../../engine/plan_contract.ts";
import { bandwidthToConverge, makePlan, type PlanModel, simulate } from "../../engine/planner.ts";
import { PLAIN_RECORD } from "../../engine/sections/ram_records.ts";
import { defaultSections } from "../../engine/sections/registry.ts";
import { StallError } from "../../engine/stall.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { CaptureChannel } from "../helpers/byte_channels.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { TestGuest } from "../../testing/test_guest.ts";

const PAGES = 4096; // 16 MiB

/** A writer at `perMs` pages per ms over `hot` pages, uniformly: its expected working set in t ms. */
function uniform(hot: number, perMs: number) {
  return (ms: number) => hot * (1 - Math.exp(-perMs * ms / hot));
}

/** A fake clock that tells a listener each time its time moves. */
class WatchedClock extends FakeClock {
  onAdvance = () => {};
  override advance(ms: number): void {
    super.advance(ms);
    this.onAdvance();
  }
}

function model(
  params: Partial<Parameters>,
  workingSet: (ms: number) => number,
  autoConverge = false,
): PlanModel {
  return {
    totalPages: PAGES,
    dataPages: PAGES,
    workingSet,
    rttMs: 0,
    syncMs: 0,
    returnPath: false,
    params: { ...DEFAULT_PARAMETERS, ...params },
    capabilities: { ...DEFAULT_CAPABILITIES, auto_converge: autoConverge },
  };
}

/**
 * Runs the real pre-copy loop (engine/outgoing.ts) on the fake clock with a guest
 * whose writer dirties random pages among `hot` at `perMs` pages per ms of
 * unthrottled time as the clock moves, as the planner's model has it; returns
 * what the engine did.
 */
async function engineRun(
  params: Partial<Parameters>,
  hot: number,
  perMs: number,
  autoConverge = false,
  xbzrle = false,
) {
  const clock = new WatchedClock();
  const guest = new TestGuest([["pc.ram", PAGES * PAGE_SIZE]]);
  guest.fillRandom(3);
  guest.start();
  const block = guest.blocks[0];
  const random = rng(7);
  let last = 0;
  let acc = 0;
  let next = 0;
  clock.onAdvance = () => {
    acc += (clock.now() - last) * perMs * (1 - guest.throttle / 100);
    last = clock.now();
    for (; next < Math.floor(acc); next++) {
      // 8 new bytes at the page's start: an XBZRLE delta of 21 bytes on the wire.
      const page = random() % hot;
      block.bytes.fill(next & 0xff, page * PAGE_SIZE, page * PAGE_SIZE + 8);
      block.markDirty(page);
    }
  };
  const all = { ...DEFAULT_PARAMETERS, ...params };
  const caps = { ...DEFAULT_CAPABILITIES, auto_converge: autoConverge, xbzrle };
  let topThrottle = 0;
  const ctx: OutgoingContext = {
    guest,
    writer: new StreamWriter(new CaptureChannel(), 1 << 20),
    savers: createSavers(defaultSections(), {
      guest,
      now: clock.now,
      params: all,
      capabilities: caps,
    }),

    clock,
    params: () => all,
    signal: new AbortController().signal,
    capabilities: caps,
    progress: {
      active: () => {},
      window: () => {},
      pass: () => {},
      stopped: () => {},
      throttled: (t) => topThrottle = Math.max(topThrottle, t),
      warn: () => {},
    },
  };
  await writeSetup(ctx);
  let error: unknown = null;
  try {
    await runPrecopy(ctx);
  } catch (e) {
    error = e;
  }
  return {
    error,
    ms: clock.now(),
    passes: ctx.savers.ram.stats.dirtySyncCount,
    bytes: ctx.writer.bytes,
    throttle: topThrottle,
  };
}

/** xorshift32: a seeded page picker. */
function rng(seed: number) {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

const near = (a: number, b: number, tolerance: number) => Math.abs(a - b) <= tolerance * b;

Deno.test("simulate(): an idle guest takes one pass at max_bandwidth, and the syncs the engine counts", () => {
  const s = simulate(model({ max_bandwidth: 16 << 20 }, () => 0));
  assert.equal(s.converges, true);
  assert.equal(s.outcome, "completed");
  assert.equal(s.passes, 3, "setup, end of the pass, the final sync");
  const drained = simulate({ ...model({ max_bandwidth: 16 << 20 }, () => 0), returnPath: true });
  assert.equal(drained.passes, 4, "and with a return path the look after the drain");
  // Each window's budget goes at its start: the pass ends within a window of bytes ÷ bandwidth.
  const ideal = PAGES * PLAIN_RECORD / (16 << 20) * 1000;
  assert.ok(Math.abs(s.total_time_ms - ideal) <= 100, `${s.total_time_ms} ms, ideal ${ideal}`);
  // Like the engine, it switches over once what is left of the pass fits max_size.
  assert.ok(s.downtime_ms > 0 && s.downtime_ms <= 30, `${s.downtime_ms} ms`);
  assert.equal(s.throttle, 0);
});

Deno.test("simulate(): pages known to be zero cost almost nothing in the first pass", () => {
  const data = simulate(model({ max_bandwidth: 16 << 20 }, () => 0));
  const zero = simulate({ ...model({ max_bandwidth: 16 << 20 }, () => 0), dataPages: 0 });
  assert.ok(zero.total_time_ms < data.total_time_ms / 100, `${zero.total_time_ms}`);
});

Deno.test("simulate() agrees with the engine's pre-copy loop: a converging guest (passes and total time)", async () => {
  const params = { max_bandwidth: 16 << 20, downtime_limit: 30 };
  const real = await engineRun(params, 2048, 1.024);
  const plan = simulate(model(params, uniform(2048, 1.024)));
  assert.equal(real.error, null);
  assert.equal(plan.converges, true);
  assert.ok(Math.abs(plan.passes - real.passes) <= 1, `plan ${plan.passes}, engine ${real.passes}`);
  assert.ok(
    near(plan.total_time_ms, real.ms, 0.15),
    `plan ${plan.total_time_ms}, engine ${real.ms}`,
  );
});

Deno.test("simulate() agrees with the engine's pre-copy loop: a guest dirtying faster than the link stalls and fails", async () => {
  const params = { max_bandwidth: 4 << 20, downtime_limit: 30, stall_windows: 30 };
  const real = await engineRun(params, PAGES, 6);
  const plan = simulate(model(params, uniform(PAGES, 6)));
  assert.ok(real.error instanceof StallError, String(real.error));
  assert.equal(plan.converges, false);
  assert.equal(plan.outcome, "stalled-failed");
  // When a stall is declared depends on 1 % new lows of a noisy backlog: compare the time.
  assert.ok(
    near(plan.total_time_ms, real.ms, 0.25),
    `plan ${plan.total_time_ms}, engine ${real.ms}`,
  );
});

Deno.test("simulate() agrees with the engine's pre-copy loop: auto-converge throttles a fast guest until it converges", async () => {
  const params = { max_bandwidth: 8 << 20, downtime_limit: 30, stall_windows: 0 };
  const real = await engineRun(params, PAGES, 2.4, true);
  const plan = simulate(model(params, uniform(PAGES, 2.4), true));
  assert.equal(real.error, null);
  assert.equal(plan.converges, true);
  assert.ok(plan.throttle > 0);
  assert.equal(plan.throttle, real.throttle, `plan ${plan.throttle} %, engine ${real.throttle} %`);
  assert.ok(
    near(plan.total_time_ms, real.ms, 0.25),
    `plan ${plan.total_time_ms}, engine ${real.ms}`,
  );
  assert.ok(Math.abs(plan.passes - real.passes) <= 2, `plan ${plan.passes}, engine ${real.passes}`);
  const without = simulate(model(params, uniform(PAGES, 2.4)));
  assert.equal(without.converges, false, "without auto-converge it never does");
  assert.equal(without.outcome, "no-convergence");
});

Deno.test("simulate() agrees with the engine's pre-copy loop: XBZRLE's deltas make a guest converge that would not without", async () => {
  const params = { max_bandwidth: 4 << 20, downtime_limit: 30, stall_windows: 50 };
  const real = await engineRun(params, PAGES, 2, false, true);
  const m = model(params, uniform(PAGES, 2));
  const plan = simulate({
    ...m,
    capabilities: { ...m.capabilities, xbzrle: true },
    xbzrleBytesPerPage: 21,
  });
  assert.equal(real.error, null, String(real.error));
  assert.equal(plan.converges, true);
  assert.ok(
    near(plan.total_time_ms, real.ms, 0.25),
    `plan ${plan.total_time_ms}, engine ${real.ms}`,
  );
  const plain = simulate(model(params, uniform(PAGES, 2)));
  assert.equal(plain.converges, false);
});

Deno.test("simulate(): stall_action switchover ends completed but not converged, with the downtime it cost", () => {
  const s = simulate(model(
    { max_bandwidth: 4 << 20, stall_windows: 20, stall_action: "switchover" },
    uniform(PAGES, 2.048),
  ));
  assert.equal(s.outcome, "stalled-switchover");
  assert.equal(s.converges, false);
  assert.ok(s.downtime_ms > 30, `${s.downtime_ms}`);
});

Deno.test("simulate(): a round trip above the limit switches over at the floor, not converged", () => {
  const s = simulate({
    ...model({ max_bandwidth: 16 << 20, downtime_limit: 30 }, uniform(64, 0.5)),
    rttMs: 40,
    returnPath: true,
  });
  assert.equal(s.outcome, "completed");
  assert.equal(s.unachievable, true);
  assert.equal(s.converges, false);
  assert.ok(s.downtime_ms >= 40);
});

Deno.test("bandwidthToConverge(): the least bandwidth that converges, and nothing below it does", () => {
  const m = model({ max_bandwidth: 4 << 20, stall_windows: 50 }, uniform(PAGES, 2.048));
  const bw = bandwidthToConverge(m)!;
  assert.ok(bw > 4 << 20);
  const at = (x: number) => simulate({ ...m, params: { ...m.params, max_bandwidth: x } });
  assert.equal(at(bw).converges, true);
  assert.equal(at(Math.round(bw * 0.97)).converges, false);
});

function measured(perSecond: number): DirtyRateInfo {
  const w = (ms: number) => Math.round(Math.min(PAGES, perSecond * ms / 1000));
  return {
    status: "measured",
    calc_time_ms: 1000,
    start_time: 1000,
    duration_ms: 1000,
    page_size: PAGE_SIZE,
    total_pages: PAGES,
    data_pages: PAGES,
    pages_per_second: perSecond,
    mib_per_second: perSecond * PAGE_SIZE / 2 ** 20,
    distinct_pages: w(1000),
    working_set: [100, 200, 500, 1000].map((ms) => ({
      window_ms: ms,
      samples: 1000 / ms,
      pages: w(ms),
      max_pages: w(ms),
      mib: 0,
    })),
    sync_ms: 0,
  };
}

Deno.test("makePlan(): a guest the link outruns: converges, with an explanation and no to_converge", () => {
  const plan = makePlan({
    dirtyRate: measured(256),
    dirtyRateInfo: measured(256),
    totalPages: PAGES,
    dataPages: PAGES,
    params: { ...DEFAULT_PARAMETERS, max_bandwidth: 32 << 20 },
    capabilities: DEFAULT_CAPABILITIES,
    rttMs: 0.5,
    returnPath: true,
    block: false,
    now: 3000,
  });
  assert.ok(PlanSchema.safeParse(plan).success, JSON.stringify(PlanSchema.safeParse(plan).error));
  assert.equal(plan.converges, true);
  assert.equal(plan.rtt_source, "probe");
  assert.equal(plan.to_converge, undefined);
  assert.match(plan.explanation, /^Converges after \d+ dirty-log syncs/);
});

Deno.test("makePlan(): a guest faster than the link: does not converge, and says what would", () => {
  const info = {
    ...measured(4096),
    xbzrle: { sampled_pages: 100, bytes_per_page: 41, ratio: 100 },
  };
  const plan = makePlan({
    dirtyRate: info,
    dirtyRateInfo: info,
    totalPages: PAGES,
    dataPages: PAGES,
    params: { ...DEFAULT_PARAMETERS, max_bandwidth: 8 << 20, stall_windows: 100 },
    capabilities: DEFAULT_CAPABILITIES,
    rttMs: null,
    returnPath: true,
    block: true,
    now: 3000,
  });
  assert.ok(PlanSchema.safeParse(plan).success);
  assert.equal(plan.converges, false);
  assert.equal(plan.outcome, "stalled-failed");
  assert.match(
    plan.explanation,
    /^Does not converge: the guest dirties 16\.0 MiB\/s against a 8\.0 MiB\/s link/,
  );
  assert.ok(plan.to_converge!.bandwidth! > 8 << 20);
  assert.ok(plan.to_converge!.auto_converge!.throttle > 0);
  assert.ok(plan.assumptions.some((a) => /block migration/.test(a)));
  assert.equal(plan.to_converge!.xbzrle!.ratio, 100);
  assert.equal(plan.to_converge!.xbzrle!.converges, true, "41-byte deltas fit the link");
  assert.equal(plan.rtt_source, "none");
});
