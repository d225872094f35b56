import { createRoute } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { newRouter } from "./router.ts";
import {
  errorResponses,
  jsonBody,
  jsonResponse,
  MigrateRequestSchema,
  MigrationInfoSchema,
  ResumeRequestSchema,
} from "./schemas.ts";

const migrate = createRoute({
  method: "post",
  path: "/migrations",
  summary: "Start an outgoing migration (QEMU migrate)",
  request: jsonBody(MigrateRequestSchema),
  responses: {
    202: jsonResponse(MigrationInfoSchema, "Migration started"),
    ...errorResponses(400, 403, 409),
  },
});

const current = createRoute({
  method: "get",
  path: "/migrations/current",
  summary: "The current or last migration (QEMU query-migrate)",
  responses: { 200: jsonResponse(MigrationInfoSchema, "Migration info; status none before any") },
});

const cancel = createRoute({
  method: "delete",
  path: "/migrations/current",
  summary: "Cancel the active migration (QEMU migrate_cancel)",
  responses: {
    202: jsonResponse(MigrationInfoSchema, "Cancelling"),
    200: jsonResponse(MigrationInfoSchema, "Nothing was active: no-op"),
  },
});

const resume = createRoute({
  method: "post",
  path: "/migrations/current/resume",
  summary: "Resume an interrupted pre-copy over a new channel (like QEMU migrate resume=true)",
  request: jsonBody(ResumeRequestSchema),
  responses: {
    202: jsonResponse(MigrationInfoSchema, "Resumed: the migration is active again"),
    ...errorResponses(400, 403, 409),
  },
});

const continueSwitchover = createRoute({
  method: "post",
  path: "/migrations/current/continue",
  summary: "Let a migration paused in pre-switchover send the rest (QEMU migrate-continue)",
  responses: {
    200: jsonResponse(MigrationInfoSchema, "Continuing: the state is now device"),
    ...errorResponses(409),
  },
});

/**
 * POST /migrations, GET|DELETE /migrations/current, POST /migrations/current/resume and
 * /migrations/current/continue.
 */
export function migrationRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter()
    .openapi(migrate, (c) => {
      const body = c.req.valid("json");
      const info = engine.migrate(body.uri, body);
      return c.json(info, 202);
    })
    .openapi(current, (c) => c.json(engine.current(), 200))
    .openapi(cancel, (c) => {
      const { cancelled, info } = engine.cancel();
      return cancelled ? c.json(info, 202) : c.json(info, 200);
    })
    .openapi(resume, async (c) => {
      const info = await engine.resumeMigration(c.req.valid("json").uri);
      return c.json(info, 202);
    })
    .openapi(continueSwitchover, (c) => c.json(engine.continueMigration(), 200));
}
