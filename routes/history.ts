import { createRoute, z } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import type { Context } from "hono";
import { newRouter, validationError } from "./router.ts";
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

/**
 * The routing pattern of an id: lower-case hex and dashes only, so GET of a
 * /migrations/<word> path another route owns (plan, current, events, …) is not
 * taken for an id and still answers 405 with its Allow; the zod schema then
 * checks it is a UUID.
 */
const ID_ROUTE = ":id{[0-9a-f-]+}";

/** GET /migrations, GET /migrations/{id}, GET /migrations/{id}/timeline. */
export function historyRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  const router = newRouter();
  // Documented from the zod routes; routed below with the id's pattern.
  router.openAPIRegistry.registerPath(one);
  router.openAPIRegistry.registerPath(timeline);
  const checked = (c: Context): string | Response => {
    const parsed = MigrationIdParam.safeParse({ id: c.req.param("id") });
    return parsed.success ? parsed.data.id : validationError(c, parsed.error.issues);
  };
  return router
    .openapi(list, (c) => c.json(engine.migrations(), 200))
    .get(`/migrations/${ID_ROUTE}`, (c) => {
      const id = checked(c);
      return typeof id === "string" ? c.json(engine.migrationRecord(id), 200) : id;
    })
    .get(`/migrations/${ID_ROUTE}/timeline`, (c) => {
      const id = checked(c);
      if (typeof id !== "string") return id;
      const tl = engine.timeline(id);
      if (prefersNdjson(c.req.header("accept"))) {
        const text = tl.windows.map((w) => JSON.stringify(w) + "\n").join("");
        return c.body(text, 200, { "content-type": NDJSON });
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
