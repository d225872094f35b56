import { createRoute } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { newRouter } from "./router.ts";
import {
  errorResponses,
  jsonBody,
  jsonResponse,
  ParametersPatchSchema,
  ParametersSchema,
} from "./schemas.ts";

const get = createRoute({
  method: "get",
  path: "/migrations/parameters",
  summary: "Migration parameters",
  responses: { 200: jsonResponse(ParametersSchema, "Current parameters") },
});

const patch = createRoute({
  method: "patch",
  path: "/migrations/parameters",
  summary: "Change parameters; a running migration applies them at its next window",
  request: jsonBody(ParametersPatchSchema),
  responses: {
    200: jsonResponse(ParametersSchema, "The parameters now in force"),
    ...errorResponses(400),
  },
});

/** GET|PATCH /migrations/parameters. */
export function parameterRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter()
    .openapi(get, (c) => c.json(engine.parameters, 200))
    .openapi(patch, (c) => c.json(engine.setParameters(c.req.valid("json")), 200));
}
