import { z } from "@hono/zod-openapi";
import { INCOMING_STATES } from "../engine/destination.ts";
import { MIGRATION_STATES } from "../engine/migration.ts";
import { RUN_STATES } from "../vm/guest.ts";
import { type NumericParameter, PARAMETER_LIMITS, STALL_ACTIONS } from "../engine/params.ts";

/** The one error shape every failing route answers with. */
export const ErrorSchema = z.object({
  error: z.object({
    code: z.string().openapi({ example: "migration-active" }),
    message: z.string().openapi({ example: "A migration is already in progress" }),
    field: z.string().optional().openapi({ description: "The request field that was invalid" }),
    reasons: z.array(z.string()).optional().openapi({ description: "Migration blocker reasons" }),
  }),
}).openapi("Error");

/** POST /migrations body (QEMU's migrate). */
export const MigrateRequestSchema = z.object({
  uri: z.string().min(1).max(4096).openapi({
    description: "Destination: tcp:HOST:PORT, unix:PATH, exec:CMD, fd:N or file:PATH[,offset=N]",
    example: "tcp:127.0.0.1:4444",
  }),
  blk: z.boolean().optional().openapi({
    description: "Also copy the guest's disk (block migration)",
  }),
  inc: z.boolean().optional().openapi({
    description: "Copy only disk blocks changed since a shared base",
  }),
  detach: z.boolean().optional().openapi({
    description: "Accepted for QEMU compatibility; ferry always answers at once",
  }),
}).strict().openapi("MigrateRequest");

/** POST /migrations/incoming body. */
export const IncomingRequestSchema = z.object({
  uri: z.string().min(1).max(4096).openapi({ example: "tcp:127.0.0.1:0" }),
}).strict().openapi("IncomingRequest");

const RamInfoSchema = z.object({
  transferred: z.number(),
  remaining: z.number(),
  total: z.number(),
  duplicate: z.number(),
  skipped: z.number(),
  normal: z.number(),
  normal_bytes: z.number(),
  dirty_pages_rate: z.number(),
  mbps: z.number(),
  dirty_sync_count: z.number(),
  pages_per_second: z.number(),
  page_size: z.number(),
}).openapi("RamInfo");

/** GET /migrations/current (QEMU's query-migrate). */
export const MigrationInfoSchema = z.object({
  status: z.enum(MIGRATION_STATES),
  uri: z.string().optional(),
  total_time: z.number().optional().openapi({ description: "ms since the migration started" }),
  setup_time: z.number().optional(),
  expected_downtime: z.number().optional(),
  downtime: z.number().optional(),
  error_desc: z.string().optional(),
  ram: RamInfoSchema.optional(),
  disk: z.object({
    transferred: z.number(),
    remaining: z.number(),
    total: z.number(),
  }).optional().openapi({ description: "With blk/inc: bytes of the disk image" }),
  xbzrle_cache: z.object({
    cache_size: z.number(),
    bytes: z.number(),
    pages: z.number(),
    cache_miss: z.number(),
    cache_miss_rate: z.number(),
    overflow: z.number(),
  }).optional().openapi({ description: "With the xbzrle capability" }),
  cpu_throttle_percentage: z.number().optional().openapi({
    description: "While auto-converge throttles",
  }),
  warnings: z.array(z.object({ code: z.string(), message: z.string() })).optional().openapi({
    description:
      "What the operator should know: downtime-limit-unachievable (the round trip alone " +
      "exceeds the limit), stalled-switchover, stalled-throttle, xbzrle-cache-resize-failed",
  }),
}).openapi("MigrationInfo", { example: { status: "none" } });

/** GET /migrations/incoming. */
export const IncomingInfoSchema = z.object({
  status: z.enum(INCOMING_STATES),
  uri: z.string().optional(),
  address: z.string().optional().openapi({
    description: "Where the peer should connect (real port)",
  }),
  bytes_received: z.number(),
  total_time: z.number().optional(),
  error_desc: z.string().optional(),
  pages: z.object({ zero: z.number(), normal: z.number() }).optional(),
  refused_peers: z.number().optional().openapi({
    description: "Connections dropped because they sent no stream header in time (or garbage)",
  }),
}).openapi("IncomingInfo");

/** Capabilities (GET answer, PUT body with any subset). */
export const CapabilitiesSchema = z.object({
  xbzrle: z.boolean(),
  auto_converge: z.boolean(),
  zero_blocks: z.boolean(),
  rdma_pin_all: z.boolean(),
  verify: z.boolean(),
}).openapi("Capabilities");

/** PUT /migrations/capabilities body. */
export const CapabilitiesPatchSchema = CapabilitiesSchema.partial().strict().openapi(
  "CapabilitiesPatch",
  {
    example: { xbzrle: false },
  },
);

/** Parameters (GET answer). */
export const ParametersSchema = z.object({
  max_bandwidth: z.number().int().openapi({ description: "bytes per second" }),
  downtime_limit: z.number().int().openapi({ description: "ms" }),
  xbzrle_cache_size: z.number().int().openapi({
    description: "bytes (at least one page, at most the guest's RAM)",
  }),
  cpu_throttle_initial: z.number().int(),
  cpu_throttle_increment: z.number().int(),
  progress_timeout: z.number().int().openapi({
    description: "ms without a byte moving before a migration fails, on either side",
  }),
  stall_windows: z.number().int().openapi({
    description:
      "100 ms windows in which what is left to send reaches no new low (1 % below the last) " +
      "before stall_action is taken; 0 never",
  }),
  stall_action: z.enum(STALL_ACTIONS).openapi({
    description: "On a stall: fail the migration, switch over now, or throttle the guest (more)",
  }),
  incoming_page_budget: z.number().int().openapi({
    description: "On a destination: page records an incoming stream may carry, as a multiple " +
      "of the guest's pages, before it is cut as one that would never end",
  }),
}).openapi("Parameters");

/** A numeric parameter in a PATCH body, within its range from the engine's one table. */
function limited(name: NumericParameter) {
  const [min, max] = PARAMETER_LIMITS[name];
  return z.number().int().min(min).max(max).optional();
}

/** PATCH /migrations/parameters body: any subset, each validated. */
export const ParametersPatchSchema = z.object({
  max_bandwidth: limited("max_bandwidth"),
  downtime_limit: limited("downtime_limit"),
  xbzrle_cache_size: limited("xbzrle_cache_size"),
  cpu_throttle_initial: limited("cpu_throttle_initial"),
  cpu_throttle_increment: limited("cpu_throttle_increment"),
  progress_timeout: limited("progress_timeout"),
  stall_windows: limited("stall_windows"),
  stall_action: z.enum(STALL_ACTIONS).optional(),
  incoming_page_budget: limited("incoming_page_budget"),
}).strict().openapi("ParametersPatch", {
  example: { max_bandwidth: 1073741824, downtime_limit: 300 },
});

/** One migration blocker. */
export const BlockerSchema = z.object({ id: z.string(), reason: z.string() }).openapi("Blocker");

/** POST /migrations/blockers body. */
export const BlockerRequestSchema = z.object({
  reason: z.string().min(1).max(1024).openapi({ example: "device passthrough in use" }),
}).strict().openapi("BlockerRequest");

/** GET /vm. */
export const VmInfoSchema = z.object({
  run_state: z.enum(RUN_STATES),
  ram_size: z.number(),
  page_size: z.number(),
  workload: z.string(),
  throttle: z.number(),
  ops: z.number(),
}).openapi("VmInfo");

/** GET /vm/ram/digest. */
export const DigestSchema = z.object({
  blocks: z.array(z.object({ name: z.string(), length: z.number(), sha256: z.string() })),
  sha256: z.string(),
  run_state: z.enum(RUN_STATES),
}).openapi("RamDigest");

/** GET /vm/disk/digest. */
export const DiskDigestSchema = z.object({
  device: z.string(),
  size: z.number(),
  sha256: z.string(),
  incomplete: z.boolean().openapi({
    description: "An incoming block migration into this image did not finish",
  }),
  run_state: z.enum(RUN_STATES),
}).openapi("DiskDigest");

/** Blocker id path parameter. */
export const BlockerIdParam = z.object({
  id: z.string().min(1).max(64).openapi({ param: { name: "id", in: "path" }, example: "1" }),
});

/**
 * A whole-number query parameter (query values arrive as text) whose errors read
 * as sentences: `required: <what> …`, `expected <what> as a whole number, got "abc"`,
 * `must be at least 1`. OpenAPI documents it as an integer with its bounds.
 */
export function queryInteger(what: string, bounds: { min: number; max?: number }) {
  const range = bounds.max === undefined
    ? `at least ${bounds.min}`
    : `from ${bounds.min} to ${bounds.max}`;
  let schema = z.number({
    error: (issue) =>
      issue.code === "invalid_type"
        ? issue.input === undefined
          ? `required: ${what}, a whole number ${range}`
          : `expected ${what} as a whole number ${range}, got ${JSON.stringify(issue.input)}`
        : issue.code === "too_small"
        ? `${what} must be at least ${bounds.min}`
        : issue.code === "too_big"
        ? `${what} must be at most ${bounds.max}`
        : undefined,
  }).int().min(bounds.min);
  if (bounds.max !== undefined) schema = schema.max(bounds.max);
  return z.preprocess(
    (v) => typeof v === "string" && /^\d{1,16}$/.test(v) ? Number(v) : v,
    schema,
  );
}

/** The JSON error responses a route may give, for createRoute. */
export function errorResponses(...statuses: (400 | 403 | 404 | 409 | 502)[]) {
  const descriptions = {
    400: "Invalid request",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    502: "Peer failed",
  };
  return Object.fromEntries(
    statuses.map((
      s,
    ) => [s, {
      description: descriptions[s],
      content: { "application/json": { schema: ErrorSchema } },
    }]),
  );
}

/** A JSON response entry for createRoute. */
export function jsonResponse<T extends z.ZodType>(schema: T, description: string) {
  return { description, content: { "application/json": { schema } } };
}

/** A JSON request body entry for createRoute. */
export function jsonBody<T extends z.ZodType>(schema: T) {
  return { body: { content: { "application/json": { schema } }, required: true } };
}
