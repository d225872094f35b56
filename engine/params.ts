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
}

/** The seed's defaults. */
export const DEFAULT_PARAMETERS: Readonly<Parameters> = {
  max_bandwidth: 32 << 20,
  downtime_limit: 30,
  xbzrle_cache_size: 64 << 20,
  cpu_throttle_initial: 20,
  cpu_throttle_increment: 10,
  progress_timeout: 60_000,
};

/** Migration capabilities (QEMU's migrate-set-capabilities), plus ferry's `verify`. */
export interface Capabilities {
  xbzrle: boolean;
  auto_converge: boolean;
  zero_blocks: boolean;
  rdma_pin_all: boolean;
  verify: boolean;
}

/** All capabilities off, as QEMU starts. */
export const DEFAULT_CAPABILITIES: Readonly<Capabilities> = {
  xbzrle: false,
  auto_converge: false,
  zero_blocks: false,
  rdma_pin_all: false,
  verify: false,
};

/** Why each capability ferry cannot honour yet is refused (never accepted and ignored). */
export const UNSUPPORTED_CAPABILITIES: Readonly<Partial<Record<keyof Capabilities, string>>> = {
  rdma_pin_all: "there is no RDMA transport in Deno, so RDMA page pinning cannot be offered",
  verify: "end-to-end RAM verification is not implemented yet",
};

const LIMITS: Record<keyof Parameters, [min: number, max: number]> = {
  max_bandwidth: [1, Number.MAX_SAFE_INTEGER],
  downtime_limit: [1, 2_000_000],
  xbzrle_cache_size: [4096, Number.MAX_SAFE_INTEGER],
  cpu_throttle_initial: [1, 99],
  cpu_throttle_increment: [1, 99],
  progress_timeout: [10, 86_400_000],
};

/** Checks a parameter patch, throwing `invalid-parameter` naming the first bad field. */
export function validateParameters(patch: Partial<Parameters>): void {
  for (const [key, value] of Object.entries(patch) as [keyof Parameters, number][]) {
    const limits = LIMITS[key];
    if (!limits) throw new EngineError("invalid-parameter", `Unknown parameter "${key}"`);
    const [min, max] = limits;
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      throw new EngineError(
        "invalid-parameter",
        `Invalid parameter "${key}": ${value} is not a whole number from ${min} to ${max}`,
        { field: key },
      );
    }
  }
}
