import { createRoute } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { newRouter } from "./router.ts";
import {
  CapabilitiesPatchSchema,
  CapabilitiesSchema,
  errorResponses,
  jsonBody,
  jsonResponse,
} from "./schemas.ts";

const get = createRoute({
  method: "get",
  path: "/migrations/capabilities",
  summary: "Migration capabilities (QEMU query-migrate-capabilities)",
  responses: { 200: jsonResponse(CapabilitiesSchema, "Every capability and whether it is on") },
});

const put = createRoute({
  method: "put",
  path: "/migrations/capabilities",
  summary: "Turn capabilities on or off (QEMU migrate-set-capabilities)",
  request: jsonBody(CapabilitiesPatchSchema),
  responses: {
    200: jsonResponse(CapabilitiesSchema, "The capabilities now in force"),
    ...errorResponses(400, 409),
  },
});

/** GET|PUT /migrations/capabilities. */
export function capabilityRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter()
    .openapi(get, (c) => c.json(engine.capabilities, 200))
    .openapi(put, (c) => c.json(engine.setCapabilities(c.req.valid("json")), 200));
}
