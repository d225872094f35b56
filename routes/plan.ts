import { createRoute } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { EngineError } from "../engine/errors.ts";
import { channelSecurity, UNSUPPORTED_CAPABILITIES, validateParameters } from "../engine/params.ts";
import { hasReturnPath, makePlan, probeRoundTrip } from "../engine/planner.ts";
import { popcount32 } from "../vm/ram.ts";
import { ApiError, newRouter } from "./router.ts";
import {
  errorResponses,
  jsonBody,
  jsonResponse,
  PlanRequestSchema,
  PlanSchema,
} from "./schemas.ts";

const plan = createRoute({
  method: "post",
  path: "/migrations/plan",
  summary: "Predict a migration before starting it: will it converge, total time, passes, " +
    "downtime, and what would make it converge",
  request: jsonBody(PlanRequestSchema),
  responses: {
    200: jsonResponse(PlanSchema, "The plan"),
    ...errorResponses(400, 403, 409, 502),
  },
});

/** POST /migrations/plan. */
export function planRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter().openapi(plan, async (c) => {
    const body = c.req.valid("json");
    const blocks = engine.guest.blocks;
    const ramBytes = blocks.reduce((n, b) => n + b.length, 0);
    validateParameters(body.parameters ?? {}, ramBytes);
    const params = { ...engine.parameters, ...body.parameters };
    const capabilities = { ...engine.capabilities, ...body.capabilities };
    for (const [key, on] of Object.entries(body.capabilities ?? {})) {
      const why = UNSUPPORTED_CAPABILITIES[key as keyof typeof UNSUPPORTED_CAPABILITIES];
      if (on && why) {
        throw new EngineError("capability-unsupported", `Cannot plan with "${key}": ${why}`, {
          capability: key,
        });
      }
    }
    const info = engine.dirtyRate.info();
    const running = engine.guest.runState === "running";
    if (running && info.status !== "measured") {
      throw new ApiError(
        409,
        "dirty-rate-unmeasured",
        info.status === "measuring"
          ? "The dirty rate is still being measured: plan once GET /vm/dirty-rate says measured"
          : "The guest is running and its dirty rate was never measured: POST /vm/dirty-rate first",
      );
    }
    let rttMs: number | null = null;
    if (body.uri !== undefined) {
      engine.transports.validate(body.uri, "connect");
      rttMs = await probeRoundTrip(
        engine.transports,
        body.uri,
        engine.clock,
        channelSecurity(params),
      );
    }
    const dataPages = blocks.reduce(
      (n, b) => n + b.touched.reduce((m, w) => m + popcount32(w), 0),
      0,
    );
    return c.json(
      makePlan({
        dirtyRate: running ? info : null,
        dirtyRateInfo: info,
        totalPages: blocks.reduce((n, b) => n + b.pages, 0),
        dataPages,
        params,
        capabilities,
        rttMs,
        returnPath: body.uri === undefined || hasReturnPath(body.uri),
        block: Boolean(body.blk || body.inc),
        now: engine.clock.wall(),
      }),
      200,
    );
  });
}
