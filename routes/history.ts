import { createRoute, z } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { newRouter } from "./router.ts";
import { errorResponses, jsonResponse, MigrationRecordSchema, TimelineSchema } from "./schemas.ts";

/** A migration id path parameter (a UUID; nothing that could be another path segment). */
const MigrationIdParam = z.object({
  id: z.string().regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, {
    message: "a migration id is a UUID, as GET /migrations lists them",
  }).openapi({
    param: { name: "id", in: "path" },
    example: "0f8e5a4c-2b7d-4e7a-9c1e-5d3f2a1b0c9d",
  }),
});

/** The NDJSON media type of a timeline: one window per line. */
export const NDJSON = "application/x-ndjson";

const list = createRoute({
  method: "get",
  path: "/migrations",
  summary: "Past migrations, both directions, newest first (the current one first while it runs)",
  responses: { 200: jsonResponse(z.array(MigrationRecordSchema), "Migrations") },
});

const one = createRoute({
  method: "get",
  path: "/migrations/{id}",
  summary: "One migration: outcome, final stats, and why it converged (or not) and its downtime",
  request: { params: MigrationIdParam },
  responses: {
    200: jsonResponse(MigrationRecordSchema, "The migration"),
    ...errorResponses(400, 404),
  },
});

const timeline = createRoute({
  method: "get",
  path: "/migrations/{id}/timeline",
  summary: "The flight recorder's 100 ms windows of an outgoing migration (current or recent); " +
    `with Accept: ${NDJSON}, one window per line`,
  request: { params: MigrationIdParam },
  responses: {
    200: {
      description: "The timeline",
      content: {
        "application/json": { schema: TimelineSchema },
        [NDJSON]: {
          schema: z.string().openapi({
            description: "One TimelineWindow (JSON) per line, oldest first",
          }),
        },
      },
    },
    ...errorResponses(400, 404),
  },
});

/** GET /migrations, GET /migrations/{id}, GET /migrations/{id}/timeline. */
export function historyRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter()
    .openapi(list, (c) => c.json(engine.migrations(), 200))
    .openapi(one, (c) => c.json(engine.migrationRecord(c.req.valid("param").id), 200))
    .openapi(timeline, (c) => {
      const tl = engine.timeline(c.req.valid("param").id);
      if (prefersNdjson(c.req.header("accept"))) {
        const text = tl.windows.map((w) => JSON.stringify(w) + "\n").join("");
        // The route's typed answers are JSON; this one is the documented NDJSON alternative.
        return c.body(text, 200, { "content-type": NDJSON }) as never;
      }
      return c.json(tl, 200);
    });
}

/** True when an Accept header names NDJSON before (or without) JSON. */
function prefersNdjson(accept: string | undefined): boolean {
  if (!accept) return false;
  const types = accept.split(",").map((t) => t.split(";")[0].trim().toLowerCase());
  const nd = types.indexOf(NDJSON);
  const json = types.indexOf("application/json");
  return nd >= 0 && (json < 0 || nd < json);
}
