import { createRoute } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { DEFAULT_CALC_TIME_MS } from "../engine/dirty_rate.ts";
import { newRouter } from "./router.ts";
import {
  DirtyRateInfoSchema,
  DirtyRateRequestSchema,
  errorResponses,
  jsonBody,
  jsonResponse,
} from "./schemas.ts";

const measure = createRoute({
  method: "post",
  path: "/vm/dirty-rate",
  summary: "Measure the guest's dirty rate and working set without migrating " +
    "(QEMU calc-dirty-rate); refused while a migration runs",
  request: jsonBody(DirtyRateRequestSchema),
  responses: {
    202: jsonResponse(DirtyRateInfoSchema, "Measuring; GET /vm/dirty-rate follows it"),
    ...errorResponses(400, 409),
  },
});

const last = createRoute({
  method: "get",
  path: "/vm/dirty-rate",
  summary: "The last dirty-rate measurement, or the one running (QEMU query-dirty-rate)",
  responses: { 200: jsonResponse(DirtyRateInfoSchema, "Status none before any") },
});

/** POST|GET /vm/dirty-rate. */
export function dirtyRateRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter()
    .openapi(measure, (c) => {
      const body = c.req.valid("json");
      return c.json(engine.dirtyRate.start(body.calc_time_ms ?? DEFAULT_CALC_TIME_MS), 202);
    })
    .openapi(last, (c) => c.json(engine.dirtyRate.info(), 200));
}
