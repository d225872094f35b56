import assert from "node:assert/strict";
import {
  completionBudget,
  ConvergenceWatch,
  DEADLINE_STEP_MS,
  DeadlineError,
  type Escalation,
  takeEscalation,
} from "../../engine/deadline.ts";
import { DEFAULT_PARAMETERS, type Parameters } from "../../engine/params.ts";
import { StallError } from "../../engine/stall.ts";

const GIB = 2 ** 30;

function params(patch: Partial<Parameters>): () => Parameters {
  const p = { ...DEFAULT_PARAMETERS, ...patch };
  return () => p;
}

Deno.test("completionBudget(): none by default, the ms form, KubeVirt's per-GiB form, and the earlier of both", () => {
  const none = { completion_timeout_ms: 0, completion_timeout_per_gib: 0 };
  assert.equal(completionBudget(none, GIB), Infinity);
  assert.equal(completionBudget({ ...none, completion_timeout_ms: 5000 }, GIB), 5000);
  assert.equal(completionBudget({ ...none, completion_timeout_per_gib: 150 }, 2 * GIB), 300_000);
  assert.equal(completionBudget({ ...none, completion_timeout_per_gib: 8 }, GIB / 4), 2000);
  assert.equal(
    completionBudget({ completion_timeout_ms: 1000, completion_timeout_per_gib: 8 }, GIB / 4),
    1000,
  );
});

Deno.test("ConvergenceWatch: the deadline fires once for cancel and switchover, then every step for throttle", () => {
  for (const on_timeout of ["cancel", "switchover"] as const) {
    const watch = new ConvergenceWatch(
      1000,
      GIB,
      params({ completion_timeout_ms: 500, on_timeout }),
    );
    let backlog = 1 << 30;
    assert.equal(watch.window(1400, backlog -= 1 << 20), null, "before the deadline");
    const e = watch.window(1500, backlog -= 1 << 20);
    assert.deepEqual(e, { source: "deadline", action: on_timeout, elapsed: 500, bound: 500 });
    assert.equal(watch.window(1600, backlog -= 1 << 20), null, "only once");
    assert.equal(watch.window(9000, backlog -= 1 << 20), null);
  }
  const watch = new ConvergenceWatch(
    0,
    GIB,
    params({ completion_timeout_ms: 500, on_timeout: "throttle" }),
  );
  const fired: number[] = [];
  for (let t = 100; t <= 3000; t += 100) {
    if (watch.window(t, 1 << 30 - t)?.source === "deadline") fired.push(t);
  }
  assert.deepEqual(fired, [500, 500 + DEADLINE_STEP_MS, 500 + 2 * DEADLINE_STEP_MS]);
});

Deno.test("ConvergenceWatch: a flat backlog reports the stall with stall_action after stall_windows windows", () => {
  const watch = new ConvergenceWatch(
    0,
    GIB,
    params({ stall_windows: 5, stall_action: "switchover" }),
  );
  const out: (Escalation | null)[] = [];
  for (let i = 0; i < 6; i++) out.push(watch.window(i * 100, 1000));
  assert.deepEqual(out.slice(0, 5), [null, null, null, null, null]);
  assert.deepEqual(out[5], { source: "stall", action: "switchover", elapsed: 5, bound: 1000 });
});

function hooks(throttles: (number | null)[]) {
  const warnings: string[] = [];
  return {
    warnings,
    throttleUp: () => throttles.shift() ?? null,
    warn: (code: string, message: string) => warnings.push(`${code}: ${message}`),
    dirtyPagesRate: () => 1234,
  };
}

Deno.test("takeEscalation(): the deadline's cancel throws a DeadlineError naming the deadline, after a warning", () => {
  const h = hooks([]);
  const watch = new ConvergenceWatch(0, GIB, params({}));
  assert.throws(
    () =>
      takeEscalation(
        { source: "deadline", action: "cancel", elapsed: 2000, bound: 2000 },
        h,
        watch,
      ),
    (e: Error) =>
      e instanceof DeadlineError && e.action === "cancel" &&
      /within its deadline of 2000 ms .*cancelled \(on_timeout cancel\)/.test(e.message),
  );
  assert.match(h.warnings[0], /^completion-timeout-cancel: Migration not complete after 2000 ms/);
});

Deno.test("takeEscalation(): switchover returns true; throttle steps up and goes on, and fails at the maximum", () => {
  const watch = new ConvergenceWatch(0, GIB, params({}));
  const h = hooks([20, null]);
  const deadline = (action: Escalation["action"]): Escalation => ({
    source: "deadline",
    action,
    elapsed: 900,
    bound: 800,
  });
  assert.equal(takeEscalation(deadline("switchover"), h, watch), true);
  assert.equal(takeEscalation(deadline("throttle"), h, watch), false);
  assert.match(h.warnings[1], /throttling the guest to 20 % \(on_timeout throttle\)/);
  assert.throws(() => takeEscalation(deadline("throttle"), h, watch), /even throttled to 99 %/);
  // The stall goes the same way with its own codes and error.
  const s = hooks([]);
  assert.throws(
    () =>
      takeEscalation({ source: "stall", action: "fail", elapsed: 30, bound: 1 << 20 }, s, watch),
    (e: Error) => e instanceof StallError && /1234 pages\/s/.test(e.message),
  );
  assert.equal(
    takeEscalation({ source: "stall", action: "switchover", elapsed: 30, bound: 0 }, s, watch),
    true,
  );
  assert.match(s.warnings[0], /^stalled-switchover:/);
});
