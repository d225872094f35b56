import { createRoute } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { DEFAULT_CALC_TIME_MS, DirtyRateMeter } from "../engine/dirty_rate.ts";
import { DirtyRateInfoSchema, DirtyRateRequestSchema } from "../engine/plan_contract.ts";
import { newRouter } from "./router.ts";
import { errorResponses, jsonBody, jsonResponse } from "./schemas.ts";

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

/**
 * The meter of a ferry's guest: a measurement never runs beside a migration (or an
 * armed incoming one), whose dirty log its syncs would take.
 */
export function dirtyRateMeter(engine: Engine): DirtyRateMeter {
  return new DirtyRateMeter({
    guest: engine.guest,
    clock: engine.clock,
    busy: () =>
      engine.migration?.isActive
        ? "a migration is active"
        : engine.incoming?.isActive
        ? "an incoming migration is armed"
        : null,
  });
}

/** POST|GET /vm/dirty-rate. */
export function dirtyRateRoutes(deps: { dirtyRate: DirtyRateMeter }) {
  const { dirtyRate } = deps;
  return newRouter()
    .openapi(measure, (c) => {
      const body = c.req.valid("json");
      return c.json(dirtyRate.start(body.calc_time_ms ?? DEFAULT_CALC_TIME_MS), 202);
    })
    .openapi(last, (c) => c.json(dirtyRate.info(), 200));
}
