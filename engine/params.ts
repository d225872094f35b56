import type { ChannelSecurity } from "../transports/transport.ts";
import { EngineError } from "./errors.ts";
import { COMPRESS_METHODS, type CompressMethod } from "./format/compression.ts";
import {
  type Capabilities,
  PARAMETER_LIMITS,
  type Parameters,
  SECURITY_PARAMETER_SCHEMAS,
  type SecurityParameter,
  STALL_ACTIONS,
  type StallAction,
  TIMEOUT_ACTIONS,
  type TimeoutAction,
} from "./contract.ts";

export type {
  Capabilities,
  Parameters,
  SecurityParameter,
  StallAction,
  TimeoutAction,
} from "./contract.ts";
export {
  PARAMETER_LIMITS,
  SECURITY_PARAMETER_SCHEMAS,
  STALL_ACTIONS,
  TIMEOUT_ACTIONS,
} from "./contract.ts";

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
  incoming_page_budget: 4096,
  tls_cert: "",
  tls_key: "",
  tls_ca: "",
  tls_hostname: "",
  migration_secret: "",
  snapshot_key: "",
  compress_method: "none",
  compress_level: 1,
  resume_grace: 60_000,
  resume_auto: false,
  multifd_channels: 1,
  completion_timeout_ms: 0,
  completion_timeout_per_gib: 0,
  on_timeout: "cancel",
};

/** QEMU's capabilities off, as QEMU starts; ferry's `verify` on (turn it off only for peers that cannot speak it). */
export const DEFAULT_CAPABILITIES: Readonly<Capabilities> = {
  xbzrle: false,
  auto_converge: false,
  zero_blocks: false,
  rdma_pin_all: false,
  verify: true,
  page_refs: false,
  pause_before_switchover: false,
};

/** Why each capability ferry cannot honour yet is refused (never accepted and ignored). */
export const UNSUPPORTED_CAPABILITIES: Readonly<Partial<Record<keyof Capabilities, string>>> = {
  rdma_pin_all: "there is no RDMA transport in Deno, so RDMA page pinning cannot be offered",
};

/**
 * Checks a parameter patch, throwing `invalid-parameter` naming the first bad
 * field. `ramBytes` (the guest's RAM) bounds the XBZRLE cache: a cache larger than
 * the guest could never fill.
 */
export function validateParameters(patch: Partial<Parameters>, ramBytes = Infinity): void {
  for (const [key, value] of Object.entries(patch) as [keyof Parameters, unknown][]) {
    if (key === "resume_auto") {
      if (typeof value !== "boolean") {
        throw new EngineError(
          "invalid-parameter",
          `Invalid parameter "${key}": ${JSON.stringify(value)} is not true or false`,
          { field: key },
        );
      }
      continue;
    }
    if (key === "stall_action" || key === "compress_method" || key === "on_timeout") {
      const allowed: readonly string[] = key === "stall_action"
        ? STALL_ACTIONS
        : key === "on_timeout"
        ? TIMEOUT_ACTIONS
        : COMPRESS_METHODS;
      if (!allowed.includes(value as StallAction | CompressMethod | TimeoutAction)) {
        throw new EngineError(
          "invalid-parameter",
          `Invalid parameter "${key}": ${JSON.stringify(value)} is not one of ${
            allowed.join(", ")
          }`,
          { field: key },
        );
      }
      continue;
    }
    if (Object.hasOwn(SECURITY_PARAMETER_SCHEMAS, key)) {
      const checked = SECURITY_PARAMETER_SCHEMAS[key as SecurityParameter].safeParse(value);
      if (!checked.success) {
        throw new EngineError(
          "invalid-parameter",
          `Invalid parameter "${key}": ${JSON.stringify(value)}: ${
            checked.error.issues[0]?.message ?? "not a string"
          }`,
          { field: key },
        );
      }
      continue;
    }
    const limits = PARAMETER_LIMITS[key as keyof typeof PARAMETER_LIMITS];
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

/**
 * The {@link ChannelSecurity} the transports apply, from the parameters: TLS on
 * tcp: when any tls_* parameter is set, the migration secret on sockets, the
 * snapshot key on one-way streams. Unset ("") parameters are left out.
 */
export function channelSecurity(p: Parameters): ChannelSecurity {
  const tlsOn = p.tls_cert !== "" || p.tls_key !== "" || p.tls_ca !== "" || p.tls_hostname !== "";
  return {
    ...(tlsOn
      ? {
        tls: {
          ...(p.tls_cert ? { certFile: p.tls_cert } : {}),
          ...(p.tls_key ? { keyFile: p.tls_key } : {}),
          ...(p.tls_ca ? { caFile: p.tls_ca } : {}),
          ...(p.tls_hostname ? { hostname: p.tls_hostname } : {}),
        },
      }
      : {}),
    ...(p.migration_secret ? { secretFile: p.migration_secret } : {}),
    ...(p.snapshot_key ? { snapshotKeyFile: p.snapshot_key } : {}),
  };
}
