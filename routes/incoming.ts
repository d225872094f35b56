import { createRoute } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { newRouter } from "./router.ts";
import {
  errorResponses,
  IncomingInfoSchema,
  IncomingRequestSchema,
  IncomingResumeRequestSchema,
  jsonBody,
  jsonResponse,
} from "./schemas.ts";

const arm = createRoute({
  method: "post",
  path: "/migrations/incoming",
  summary: "Wait for an incoming migration on a URI (QEMU migrate-incoming)",
  request: jsonBody(IncomingRequestSchema),
  responses: {
    202: jsonResponse(IncomingInfoSchema, "Listening; address has the real port"),
    ...errorResponses(400, 403, 409),
  },
});

const query = createRoute({
  method: "get",
  path: "/migrations/incoming",
  summary: "State of the incoming side",
  responses: {
    200: jsonResponse(IncomingInfoSchema, "Incoming info; status none when never armed"),
  },
});

const disarm = createRoute({
  method: "delete",
  path: "/migrations/incoming",
  summary: "Disarm the incoming side: stop listening, or abandon a stream being loaded",
  responses: {
    202: jsonResponse(IncomingInfoSchema, "Disarmed (cancelled)"),
    200: jsonResponse(IncomingInfoSchema, "Nothing was armed: no-op"),
  },
});

const resume = createRoute({
  method: "post",
  path: "/migrations/incoming/resume",
  summary: "Listen for the source's resume of an interrupted pre-copy (like QEMU migrate-recover)",
  request: jsonBody(IncomingResumeRequestSchema),
  responses: {
    202: jsonResponse(IncomingInfoSchema, "Listening for the resume; address has the real port"),
    ...errorResponses(400, 403, 409),
  },
});

/** POST|GET|DELETE /migrations/incoming, POST /migrations/incoming/resume. */
export function incomingRoutes(deps: { engine: Engine }) {
  const { engine } = deps;
  return newRouter()
    .openapi(arm, async (c) => {
      const body = c.req.valid("json");
      const info = await engine.listenIncoming(body.uri, body.peer);
      return c.json(info, 202);
    })
    .openapi(query, (c) => c.json(engine.incomingInfo(), 200))
    .openapi(disarm, (c) => {
      const { cancelled, info } = engine.disarmIncoming();
      return cancelled ? c.json(info, 202) : c.json(info, 200);
    })
    .openapi(resume, async (c) => {
      const info = await engine.resumeIncoming(c.req.valid("json").uri);
      return c.json(info, 202);
    });
}
