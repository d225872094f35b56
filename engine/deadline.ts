/**
 * Deadlines with actions (docs/ARCHITECTURE.md, "Convergence"): a migration that
 * has not completed within `completion_timeout_ms` (or KubeVirt's per-GiB form) is
 * cancelled, switched over or throttled, as `on_timeout` says. Stall detection
 * reports through the same {@link Escalation}, so both are taken the same way and
 * read the same in warnings and in the flight recorder's explanation.
 * @module
 */
import { MAX_THROTTLE } from "./auto_converge.ts";
import type { Parameters, StallAction, TimeoutAction } from "./contract.ts";
import { StallDetector, StallError } from "./stall.ts";

/** After a throttle step at the deadline, the next step comes this much later, ms. */
export const DEADLINE_STEP_MS = 1000;

/** What a migration that will not converge by itself is told to do, and by whom. */
export interface Escalation {
  /** Who asked: stall detection or the completion deadline. */
  readonly source: "stall" | "deadline";
  readonly action: StallAction | TimeoutAction;
  /** Windows without a new low (stall) or ms since the start (deadline). */
  readonly elapsed: number;
  /** The lowest backlog reached (stall), or the deadline in ms from the start. */
  readonly bound: number;
}

/**
 * The completion deadline in ms from the migration's start for a guest of
 * `ramBytes`: the earlier of `completion_timeout_ms` and
 * `completion_timeout_per_gib` s × GiB of RAM (each 0 = none); Infinity for none.
 */
export function completionBudget(
  p: Pick<Parameters, "completion_timeout_ms" | "completion_timeout_per_gib">,
  ramBytes: number,
): number {
  const direct = p.completion_timeout_ms > 0 ? p.completion_timeout_ms : Infinity;
  const perGib = p.completion_timeout_per_gib > 0
    ? p.completion_timeout_per_gib * 1000 * Math.max(ramBytes, 1) / 2 ** 30
    : Infinity;
  return Math.min(direct, perGib);
}

/** A migration passed its completion deadline and `on_timeout` ended it (cancel, or throttling at its maximum). */
export class DeadlineError extends Error {
  override readonly name = "DeadlineError";
  constructor(
    /** The action that ended it: `cancel`, or `throttle` that reached MAX_THROTTLE. */
    readonly action: TimeoutAction,
    /** The deadline, ms from the start. */
    readonly budgetMs: number,
    /** ms since the start when it ended. */
    readonly elapsedMs: number,
    why = "",
  ) {
    super(
      `Migration did not complete within its deadline of ${Math.round(budgetMs)} ms ` +
        `(completion_timeout_ms / completion_timeout_per_gib): ${
          action === "cancel"
            ? "cancelled (on_timeout cancel); the guest runs on here"
            : `still not done after ${Math.round(elapsedMs)} ms${why}`
        }`,
    );
  }
}

/**
 * Watches a migration, window by window, for the two reasons to escalate: the
 * backlog reaching no new low for `stall_windows` windows, and the completion
 * deadline passing. Returns at most one {@link Escalation} per window.
 */
export class ConvergenceWatch {
  readonly #stall: StallDetector;
  readonly #start: number;
  readonly #ramBytes: number;
  /** When the deadline fires next, ms of the clock (after a throttle step: one step later). */
  #nextAt = -1;
  #fired = false;

  constructor(
    start: number,
    ramBytes: number,
    private readonly params: () => Readonly<Parameters>,
  ) {
    this.#start = start;
    this.#ramBytes = ramBytes;
    this.#stall = new StallDetector(() => params().stall_windows);
  }

  /** Windows since the backlog last reached a new low. */
  get stalledWindows(): number {
    return this.#stall.since;
  }

  /** The lowest backlog seen, bytes. */
  get lowBytes(): number {
    return this.#stall.low;
  }

  /** The deadline in ms from the start (Infinity: none), read live from the parameters. */
  get budget(): number {
    return completionBudget(this.params(), this.#ramBytes);
  }

  /** One window ended at `now` with `backlog` bytes left: what to do, if anything. */
  window(now: number, backlog: number): Escalation | null {
    const p = this.params();
    const elapsed = now - this.#start;
    const budget = this.budget;
    if (elapsed >= budget && (!this.#fired || (this.#nextAt >= 0 && now >= this.#nextAt))) {
      this.#fired = true;
      this.#nextAt = p.on_timeout === "throttle" ? now + DEADLINE_STEP_MS : -1;
      return { source: "deadline", action: p.on_timeout, elapsed, bound: budget };
    }
    if (this.#stall.observe(backlog)) {
      return {
        source: "stall",
        action: p.stall_action,
        elapsed: this.#stall.since,
        bound: this.#stall.low,
      };
    }
    return null;
  }

  /** Starts counting the stall again (a throttle step changed the conditions). */
  restartStall(): void {
    this.#stall.restart();
  }
}

/** What taking an escalation needs from the loop. */
export interface EscalationHooks {
  /** Steps auto-converge's throttle up (engaging it if needed); null when already at the maximum. */
  throttleUp(): number | null;
  warn(code: string, message: string): void;
  /** The guest's dirty rate, pages/s (for the stall's error). */
  dirtyPagesRate(): number;
}

/**
 * Takes an escalation: warns and returns true for a switchover now, warns and
 * steps the throttle up (returning false: the loop goes on), or throws the
 * {@link StallError} or {@link DeadlineError} that ends the migration.
 */
export function takeEscalation(e: Escalation, hooks: EscalationHooks, watch: ConvergenceWatch) {
  if (e.source === "stall") {
    const why = ` (the guest dirtied ${hooks.dirtyPagesRate()} pages/s)`;
    if (e.action === "switchover") {
      hooks.warn(
        "stalled-switchover",
        `Migration stalled for ${e.elapsed} windows: switching over now (stall_action ` +
          `switchover); the downtime will exceed the limit`,
      );
      return true;
    }
    if (e.action === "throttle") {
      const throttle = hooks.throttleUp();
      if (throttle === null) {
        throw new StallError(e.bound, e.elapsed, `${why}, even throttled to ${MAX_THROTTLE} %`);
      }
      hooks.warn(
        "stalled-throttle",
        `Migration stalled for ${e.elapsed} windows: throttling the guest to ${throttle} % ` +
          `(stall_action throttle)`,
      );
      watch.restartStall();
      return false;
    }
    throw new StallError(e.bound, e.elapsed, why);
  }
  const ms = (x: number) => `${Math.round(x)} ms`;
  const over = `Migration not complete after ${ms(e.elapsed)}, past its deadline (${ms(e.bound)})`;
  if (e.action === "switchover") {
    hooks.warn(
      "completion-timeout-switchover",
      `${over}: switching over now (on_timeout switchover); the downtime may exceed the limit`,
    );
    return true;
  }
  if (e.action === "throttle") {
    const throttle = hooks.throttleUp();
    if (throttle === null) {
      throw new DeadlineError(
        "throttle",
        e.bound,
        e.elapsed,
        `, even throttled to ${MAX_THROTTLE} %`,
      );
    }
    hooks.warn(
      "completion-timeout-throttle",
      `${over}: throttling the guest to ${throttle} % (on_timeout throttle)`,
    );
    watch.restartStall();
    return false;
  }
  hooks.warn("completion-timeout-cancel", `${over}: cancelling (on_timeout cancel)`);
  throw new DeadlineError("cancel", e.bound, e.elapsed);
}
