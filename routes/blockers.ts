import { createRoute, z } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { newRouter } from "./router.ts";
import {
  BlockerIdParam,
  BlockerRequestSchema,
  BlockerSchema,
  errorResponses,
  jsonBody,
  jsonResponse,
} from "./schemas.ts";

const list = createRoute({
  method: "get",
  path: "/migrations/blockers",
  summary: "Reasons that currently forbid migration",
  responses: { 200: jsonResponse(z.array(BlockerSchema), "Blockers") },
});

const add = createRoute({
  method: "post",
  path: "/migrations/blockers",
  summary: "Add a migration blocker (QEMU migrate_add_blocker)",
  request: jsonBody(BlockerRequestSchema),
  responses: {
    201: jsonResponse(BlockerSchema, "The new blocker"),
    ...errorResponses(400, 409),
  },
});

const remove = createRoute({
  method: "delete",
  path: "/migrations/blockers/{id}",
  summary: "Remove a migration blocker (QEMU migrate_del_blocker)",
  request: { params: BlockerIdParam },
  responses: { 200: jsonResponse(BlockerSchema, "The removed blocker"), ...errorResponses(404) },
});

/** GET|POST /migrations/blockers, DELETE /migrations/blockers/:id. */
export function blockerRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter()
    .openapi(list, (c) => c.json(engine.blockers, 200))
    .openapi(add, (c) => c.json(engine.addBlocker(c.req.valid("json").reason), 201))
    .openapi(remove, (c) => c.json(engine.removeBlocker(c.req.valid("param").id), 200));
}
