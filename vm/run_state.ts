/**
 * The checks every guest kind makes on run-state changes and throttles, so the
 * synthetic guest (vm/vm.ts) and the x86 guest (vm/x86/x86_guest.ts) refuse the
 * same things with the same errors.
 * @module
 */
import { VmError } from "./error.ts";
import { RUN_STATES, type RunState } from "./guest.ts";

/** Throws VmError `invalid-argument` unless `state` is one of QEMU's run states. */
export function checkRunState(state: RunState): void {
  if (!(RUN_STATES as readonly string[]).includes(state)) {
    throw new VmError("invalid-argument", `Unknown run state "${state}"`);
  }
}

/** What stop(next) accepts: any run state but `running`, which only start() makes. */
export function checkStopTarget(next: RunState): void {
  checkRunState(next);
  if (next === "running") {
    throw new VmError("invalid-run-state", `Cannot stop into "running": use start()`);
  }
}

/** What setRunState(state) accepts from `current`: `running` only if already running. */
export function checkSetRunState(current: RunState, state: RunState): void {
  checkRunState(state);
  if (state === "running" && current !== "running") {
    throw new VmError(
      "invalid-run-state",
      `Cannot set run state "running" directly: use start()`,
    );
  }
}

/** Throws VmError `invalid-argument` unless `percent` is an integer from 0 to 99. */
export function checkThrottle(percent: number): void {
  if (!Number.isInteger(percent) || percent < 0 || percent > 99) {
    throw new VmError(
      "invalid-argument",
      `Invalid throttle ${percent}: expected an integer percentage 0-99`,
    );
  }
}

/**
 * Tells each of `listeners` (a copy of the set, so one may unsubscribe) about a
 * change; a listener that throws is logged and the others still hear of it.
 */
export function notifyRunState(
  listeners: Iterable<(from: RunState, to: RunState) => void>,
  from: RunState,
  to: RunState,
): void {
  for (const listener of [...listeners]) {
    try {
      listener(from, to);
    } catch (error) {
      console.error(`Run-state listener failed on ${from} → ${to}:`, error);
    }
  }
}
