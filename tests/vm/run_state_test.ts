import assert from "node:assert/strict";
import { VmError } from "../../vm/error.ts";
import type { RunState } from "../../vm/guest.ts";
import {
  checkRunState,
  checkSetRunState,
  checkStopTarget,
  checkThrottle,
  notifyRunState,
} from "../../vm/run_state.ts";

const code = (c: string) => (e: unknown) => e instanceof VmError && e.code === c;

Deno.test("checkRunState() accepts QEMU's run states and names an unknown one", () => {
  for (
    const s of ["prelaunch", "running", "paused", "inmigrate", "finish-migrate", "postmigrate"]
  ) {
    checkRunState(s as RunState);
  }
  assert.throws(() => checkRunState("asleep" as RunState), /Unknown run state "asleep"/);
});

Deno.test("checkStopTarget() refuses running (only start() runs a guest)", () => {
  checkStopTarget("paused");
  checkStopTarget("postmigrate");
  assert.throws(() => checkStopTarget("running"), code("invalid-run-state"));
  assert.throws(() => checkStopTarget("x" as RunState), code("invalid-argument"));
});

Deno.test("checkSetRunState() allows running only when already running", () => {
  checkSetRunState("running", "running");
  checkSetRunState("paused", "inmigrate");
  assert.throws(() => checkSetRunState("paused", "running"), code("invalid-run-state"));
});

Deno.test("checkThrottle() takes whole percentages 0-99", () => {
  for (const p of [0, 50, 99]) checkThrottle(p);
  for (const p of [-1, 100, 1.5, NaN]) {
    assert.throws(() => checkThrottle(p), code("invalid-argument"), String(p));
  }
});

Deno.test("notifyRunState() tells every listener, even after one throws", () => {
  const heard: string[] = [];
  const listeners = new Set<(from: RunState, to: RunState) => void>([
    () => {
      throw new Error("listener bug");
    },
    (from, to) => heard.push(`${from}→${to}`),
  ]);
  const error = console.error;
  const logged: unknown[] = [];
  console.error = (...args: unknown[]) => logged.push(args[0]);
  try {
    notifyRunState(listeners, "paused", "running");
  } finally {
    console.error = error;
  }
  assert.deepEqual(heard, ["paused→running"]);
  assert.match(String(logged[0]), /Run-state listener failed on paused → running/);
});
