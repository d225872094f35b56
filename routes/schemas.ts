import { z } from "@hono/zod-openapi";
import { RUN_STATES } from "../vm/guest.ts";
import { CapabilitiesPatchSchema, ParametersPatchSchema, PEER_KINDS } from "../engine/contract.ts";

// The API's data (info, capabilities, parameters) is defined once, in the engine's contract.
export {
  CapabilitiesPatchSchema,
  CapabilitiesSchema,
  ExplanationSchema,
  IncomingInfoSchema,
  MigrationInfoSchema,
  MigrationRecordSchema,
  ParametersPatchSchema,
  ParametersSchema,
  ResumeInfoSchema,
  TimelinePassSchema,
  TimelineSchema,
  TimelineWindowSchema,
  VmInfoSchema,
} from "../engine/contract.ts";

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

// Planning: the dirty-rate measurement and the plan (engine/plan_contract.ts).
export {
  DirtyRateInfoSchema,
  DirtyRateRequestSchema,
  PlanSchema,
  PredictionSchema,
  WorkingSetSchema,
} from "../engine/plan_contract.ts";

/** POST /migrations/plan body: the migrate body with the URI optional, parameters, capabilities. */
export const PlanRequestSchema = MigrateRequestSchema.extend({
  uri: MigrateRequestSchema.shape.uri.optional().openapi({
    description: "Destination, as for POST /migrations; tcp: and unix: are probed for the " +
      "round trip (a connection opened and closed at once, without a stream)",
    example: "tcp:127.0.0.1:4444",
  }),
  parameters: ParametersPatchSchema.optional().openapi({
    description: "Parameters to plan with, over the current ones",
  }),
  capabilities: CapabilitiesPatchSchema.optional().openapi({
    description: "Capabilities to plan with, over the current ones",
  }),
}).strict().openapi("PlanRequest", {
  example: { parameters: { max_bandwidth: 134217728, downtime_limit: 300 } },
});

/** POST /migrations/incoming body. */
export const IncomingRequestSchema = z.object({
  uri: z.string().min(1).max(4096).openapi({ example: "tcp:127.0.0.1:0" }),
  peer: z.enum(PEER_KINDS).optional().openapi({
    description:
      "Who sends the stream: another ferry, or a QEMU (then this ferry must run --peer qemu); " +
      "a mismatch is refused before listening",
  }),
}).strict().openapi("IncomingRequest");

/** POST /migrations/current/resume body. */
export const ResumeRequestSchema = z.object({
  uri: z.string().min(1).max(4096).openapi({
    description: "Where the destination listens again for the resume (tcp: or unix:)",
    example: "tcp:127.0.0.1:4444",
  }),
}).strict().openapi("ResumeRequest");

/** POST /migrations/incoming/resume body. */
export const IncomingResumeRequestSchema = z.object({
  uri: z.string().min(1).max(4096).optional().openapi({
    description: "Where to listen for the resume (default: the address the stream came to)",
    example: "tcp:127.0.0.1:4444",
  }),
}).strict().openapi("IncomingResumeRequest");

/** One migration blocker. */
export const BlockerSchema = z.object({ id: z.string(), reason: z.string() }).openapi("Blocker");

/** POST /migrations/blockers body. */
export const BlockerRequestSchema = z.object({
  reason: z.string().min(1).max(1024).openapi({ example: "device passthrough in use" }),
}).strict().openapi("BlockerRequest");

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

/** Largest console input in one request. */
export const MAX_CONSOLE_INPUT_CHARS = 4096;

/** POST /vm/console body. */
export const ConsoleInputSchema = z.object({
  input: z.string().min(1).max(MAX_CONSOLE_INPUT_CHARS).openapi({
    description: "Text typed into the console (a newline ends a command line)",
    example: "echo $((6*7))\n",
  }),
}).strict().openapi("ConsoleInput");

/** POST /vm/console answer. */
export const ConsoleSentSchema = z.object({
  sent: z.number().int().openapi({ description: "Characters typed" }),
}).openapi("ConsoleSent");

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
