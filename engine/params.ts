import { EngineError } from "./errors.ts";

/** Tunables of QEMU's migrate_set_speed / _downtime / _cache_size, plus throttle steps. */
export interface Parameters {
  /** Bytes per second the migration may send (QEMU's max-bandwidth). */
  max_bandwidth: number;
  /** Longest acceptable guest pause at switchover, in ms. */
  downtime_limit: number;
  /** Bytes of XBZRLE page cache. */
  xbzrle_cache_size: number;
  /** First auto-converge throttle step, percent. */
  cpu_throttle_initial: number;
  /** Further auto-converge throttle steps, percent. */
  cpu_throttle_increment: number;
  /**
   * Milliseconds a migration may go without moving a byte before it fails (like
   * KubeVirt's progressTimeout): on the source, no bytes accepted by the channel; on
   * the destination, no bytes received from the peer.
   */
  progress_timeout: number;
  /**
   * Windows (100 ms each) in which what is left to send reaches no new low before
   * the migration counts as stalled and `stall_action` is taken; 0 never.
   */
  stall_windows: number;
  /** What a stall does: fail the migration, switch over now, or throttle the guest (more). */
  stall_action: StallAction;
  /**
   * On a destination: page records an incoming stream may carry, as a multiple of
   * the guest's pages, before it is cut as one that would never end.
   */
  incoming_page_budget: number;
}

/** What a stalled migration does (the `stall_action` parameter). */
export const STALL_ACTIONS = ["fail", "switchover", "throttle"] as const;
/** One of {@link STALL_ACTIONS}. */
export type StallAction = typeof STALL_ACTIONS[number];

/** The seed's defaults. */
export const DEFAULT_PARAMETERS: Readonly<Parameters> = {
  max_bandwidth: 32 << 20,
  downtime_limit: 30,
  xbzrle_cache_size: 64 << 20,
  cpu_throttle_initial: 20,
  cpu_throttle_increment: 10,
  progress_timeout: 60_000,
  stall_windows: 600,
  stall_action: "fail",
  incoming_page_budget: 64,
};

/** Migration capabilities (QEMU's migrate-set-capabilities), plus ferry's `verify`. */
export interface Capabilities {
  xbzrle: boolean;
  auto_converge: boolean;
  zero_blocks: boolean;
  rdma_pin_all: boolean;
  verify: boolean;
}

/** QEMU's capabilities off, as QEMU starts; ferry's `verify` on (turn it off only for peers that cannot speak it). */
export const DEFAULT_CAPABILITIES: Readonly<Capabilities> = {
  xbzrle: false,
  auto_converge: false,
  zero_blocks: false,
  rdma_pin_all: false,
  verify: true,
};

/** Why each capability ferry cannot honour yet is refused (never accepted and ignored). */
export const UNSUPPORTED_CAPABILITIES: Readonly<Partial<Record<keyof Capabilities, string>>> = {
  rdma_pin_all: "there is no RDMA transport in Deno, so RDMA page pinning cannot be offered",
};

/** The numeric parameters. */
export type NumericParameter = Exclude<keyof Parameters, "stall_action">;

/**
 * The range of every numeric parameter: the one table the engine's checks and the
 * API schema both use. `xbzrle_cache_size` is further bounded by the guest's RAM.
 */
export const PARAMETER_LIMITS: Readonly<
  Record<NumericParameter, readonly [min: number, max: number]>
> = {
  max_bandwidth: [1, Number.MAX_SAFE_INTEGER],
  downtime_limit: [1, 2_000_000],
  xbzrle_cache_size: [4096, 64 * 2 ** 30],
  cpu_throttle_initial: [1, 99],
  cpu_throttle_increment: [1, 99],
  progress_timeout: [10, 86_400_000],
  stall_windows: [0, 10_000_000],
  incoming_page_budget: [2, 1_000_000],
};

/**
 * Checks a parameter patch, throwing `invalid-parameter` naming the first bad
 * field. `ramBytes` (the guest's RAM) bounds the XBZRLE cache: a cache larger than
 * the guest could never fill.
 */
export function validateParameters(patch: Partial<Parameters>, ramBytes = Infinity): void {
  for (const [key, value] of Object.entries(patch) as [keyof Parameters, unknown][]) {
    if (key === "stall_action") {
      if (!STALL_ACTIONS.includes(value as StallAction)) {
        throw new EngineError(
          "invalid-parameter",
          `Invalid parameter "${key}": ${JSON.stringify(value)} is not one of ${
            STALL_ACTIONS.join(", ")
          }`,
          { field: key },
        );
      }
      continue;
    }
    const limits = PARAMETER_LIMITS[key];
    if (!limits) throw new EngineError("invalid-parameter", `Unknown parameter "${key}"`);
    const [min, max] = key === "xbzrle_cache_size"
      ? [limits[0], Math.min(limits[1], Math.max(limits[0], ramBytes))]
      : limits;
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      const why = key === "xbzrle_cache_size" && max === ramBytes ? " (the guest's RAM)" : "";
      throw new EngineError(
        "invalid-parameter",
        `Invalid parameter "${key}": ${value} is not a whole number from ${min} to ${max}${why}`,
        { field: key },
      );
    }
  }
}
