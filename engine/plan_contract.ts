/**
 * The API's data for convergence planning, as zod schemas: the dirty-rate
 * measurement (`/vm/dirty-rate`, QEMU's calc-dirty-rate) and the plan of a
 * migration before it starts (`/migrations/plan`). The engine's types are
 * inferred from them (docs/ARCHITECTURE.md, "Planning a migration").
 * @module
 */
import { z } from "@hono/zod-openapi";

/** States of a dirty-rate measurement. */
export const DIRTY_RATE_STATES = ["none", "measuring", "measured", "cancelled"] as const;

/** Shortest and longest measurement, ms. */
export const CALC_TIME_LIMITS = [100, 600_000] as const;

/** POST /vm/dirty-rate body. */
export const DirtyRateRequestSchema = z.object({
  calc_time_ms: z.number().int().min(CALC_TIME_LIMITS[0]).max(CALC_TIME_LIMITS[1]).optional()
    .openapi({
      description: "How long to measure, ms (default 1000), in 100 ms samples; the working " +
        "set is reported for every window of 100 ms, 200 ms, 500 ms, 1 s, 2 s, 5 s, 10 s, … " +
        "that fits",
      example: 1000,
    }),
}).strict().openapi("DirtyRateRequest");

/** How many distinct pages the guest dirtied in windows of one length. */
export const WorkingSetSchema = z.object({
  window_ms: z.number().int().openapi({ description: "Window length, ms" }),
  samples: z.number().int().openapi({ description: "Non-overlapping windows measured" }),
  pages: z.number().openapi({ description: "Distinct pages dirtied in a window, on average" }),
  max_pages: z.number().int().openapi({ description: "The most in any one window" }),
  mib: z.number().openapi({ description: "`pages` in MiB" }),
}).openapi("WorkingSet");

/** GET /vm/dirty-rate (QEMU's query-dirty-rate). */
export const DirtyRateInfoSchema = z.object({
  status: z.enum(DIRTY_RATE_STATES),
  calc_time_ms: z.number().int().optional(),
  start_time: z.number().optional().openapi({ description: "Wall time it started, epoch ms" }),
  duration_ms: z.number().optional().openapi({ description: "Time measured so far, ms" }),
  page_size: z.number().int(),
  total_pages: z.number().int().openapi({ description: "Pages of guest RAM" }),
  data_pages: z.number().int().optional().openapi({
    description: "Pages that may hold data (the others are known zero and cost a migration " +
      "almost nothing)",
  }),
  pages_per_second: z.number().optional().openapi({
    description: "Distinct pages dirtied per second, measured in 100 ms windows",
  }),
  mib_per_second: z.number().optional().openapi({
    description: "`pages_per_second` in MiB/s (QEMU's dirty-rate unit)",
  }),
  distinct_pages: z.number().int().optional().openapi({
    description: "Pages dirtied at least once during the whole measurement",
  }),
  working_set: z.array(WorkingSetSchema).optional().openapi({
    description: "How the working set grows with the window",
  }),
  sync_ms: z.number().optional().openapi({
    description: "Mean time of one dirty-log sync, ms (the x86 guest's compares all of RAM; " +
      "its final one is part of a migration's downtime)",
  }),
  xbzrle: z.object({
    sampled_pages: z.number().int().openapi({
      description: "Dirtied pages whose delta over a period of 1 s was encoded",
    }),
    bytes_per_page: z.number().openapi({
      description: "Wire bytes XBZRLE would send for one of them, on average (a whole page " +
        "when the delta overflows, nothing when it is unchanged)",
    }),
    ratio: z.number().openapi({ description: "A whole page's record ÷ bytes_per_page" }),
  }).optional().openapi({ description: "XBZRLE's predicted ratio, from sampled pages" }),
  error_desc: z.string().optional().openapi({ description: "Why it was cancelled" }),
}).openapi("DirtyRateInfo", { example: { status: "none", page_size: 4096, total_pages: 65536 } });

/** How a planned migration ends. */
export const PLAN_OUTCOMES = [
  "completed",
  "stalled-switchover",
  "stalled-failed",
  "no-convergence",
] as const;

/** What one simulated migration predicts. */
export const PredictionSchema = z.object({
  converges: z.boolean().openapi({
    description: "It completes within downtime_limit (not by a stall's forced switchover, " +
      "not at a floor above the limit)",
  }),
  outcome: z.enum(PLAN_OUTCOMES),
  total_time_ms: z.number().openapi({
    description: "Until completed, or until it fails or the simulation gives up",
  }),
  passes: z.number().int().openapi({ description: "Dirty-log syncs (ram.dirty_sync_count)" }),
  downtime_ms: z.number().openapi({ description: "Expected downtime, as the engine estimates it" }),
  transferred_bytes: z.number(),
  throttle: z.number().openapi({ description: "The highest auto-converge throttle reached, %" }),
}).openapi("Prediction");

/** POST /migrations/plan answer. */
export const PlanSchema = PredictionSchema.extend({
  bandwidth: z.number().openapi({ description: "Bytes/s the plan sends at" }),
  bandwidth_source: z.enum(["max_bandwidth"]).openapi({
    description: "Where the bandwidth came from: the rate limit (the probe measures the " +
      "round trip only)",
  }),
  rtt_ms: z.number().openapi({ description: "Round trip counted in every downtime" }),
  rtt_source: z.enum(["probe", "none"]),
  dirty_rate: DirtyRateInfoSchema,
  explanation: z.string().openapi({ description: "Why it converges or not, in a sentence" }),
  to_converge: z.object({
    bandwidth: z.number().nullable().openapi({
      description: "The least max_bandwidth (bytes/s) with which it converges as asked; " +
        "null when none up to 64 GiB/s does",
    }),
    auto_converge: PredictionSchema.nullable().openapi({
      description: "The same migration with auto_converge on (null when it already is)",
    }),
    xbzrle: PredictionSchema.extend({
      ratio: z.number().openapi({ description: "XBZRLE's predicted ratio (the measurement's)" }),
    }).nullable().openapi({
      description: "The same migration with xbzrle on and the predicted ratio (null when it " +
        "already is on, cannot be, or no delta was sampled)",
    }),
  }).optional().openapi({ description: "When it does not converge: what would make it" }),
  assumptions: z.array(z.string()).openapi({
    description: "What the model left out (compression, XBZRLE's ratio, …)",
  }),
}).openapi("Plan");

/** What GET /vm/dirty-rate answers. */
export type DirtyRateInfo = z.infer<typeof DirtyRateInfoSchema>;
/** One working-set row. */
export type WorkingSet = z.infer<typeof WorkingSetSchema>;
/** One simulated migration's prediction. */
export type Prediction = z.infer<typeof PredictionSchema>;
/** POST /migrations/plan answer. */
export type Plan = z.infer<typeof PlanSchema>;
/** One of {@link PLAN_OUTCOMES}. */
export type PlanOutcome = typeof PLAN_OUTCOMES[number];
/** One of {@link DIRTY_RATE_STATES}. */
export type DirtyRateStatus = typeof DIRTY_RATE_STATES[number];
