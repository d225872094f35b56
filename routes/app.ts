import { bearerAuth } from "hono/bearer-auth";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import type { Engine } from "../engine/engine.ts";
import { blockerRoutes } from "./blockers.ts";
import { capabilityRoutes } from "./capabilities.ts";
import { eventRoutes } from "./events.ts";
import { incomingRoutes } from "./incoming.ts";
import { migrationRoutes } from "./migrations.ts";
import { parameterRoutes } from "./parameters.ts";
import { domainError, type ErrorBody, newRouter } from "./router.ts";
import { type VmInspector, vmRoutes } from "./vm.ts";

/** What the HTTP API is built from. */
export interface AppDeps {
  readonly engine: Engine;
  readonly vm: VmInspector;
  /** SSE keep-alive interval (ms); tests shorten it. */
  readonly keepAliveMs?: number;
  /** The dashboard page served at GET /, if any. */
  readonly dashboard?: string;
  /**
   * When set, every request needs `Authorization: Bearer <token>` — except GET /,
   * the dashboard page, which holds no data and asks the user for the token.
   */
  readonly token?: string;
}

/** Largest request body accepted (every JSON body ferry takes is far smaller). */
export const MAX_BODY_BYTES = 64 << 10;

function unauthorized(message: string): ErrorBody {
  return { error: { code: "unauthorized", message } };
}

/** ferry's version, reported by /openapi.json. */
export const VERSION = "0.1.0";

/**
 * Builds the whole REST + SSE API: mounts every route group, renders every error
 * as `{ error: { code, message } }`, and serves the OpenAPI document generated
 * from the same zod schemas that validate requests.
 */
export function createApp(deps: AppDeps) {
  const app = newRouter();
  if (deps.token) {
    const auth = bearerAuth({
      token: deps.token,
      noAuthenticationHeader: {
        message: unauthorized("This ferry needs an Authorization: Bearer token"),
      },
      invalidAuthenticationHeader: {
        message: {
          error: {
            code: "bad-request",
            message: 'Malformed Authorization header: expected "Bearer <token>"',
          },
        },
      },
      invalidToken: { message: unauthorized("Invalid bearer token") },
    });
    app.use(
      "*",
      (c, next) => c.req.method === "GET" && c.req.path === "/" ? next() : auth(c, next),
    );
  }
  app.use(
    "*",
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: (c) =>
        c.json<ErrorBody>({
          error: {
            code: "payload-too-large",
            message: `Request body larger than ${MAX_BODY_BYTES} bytes`,
          },
        }, 413),
    }),
  );
  app.route("/", migrationRoutes(deps));
  app.route("/", incomingRoutes(deps));
  app.route("/", capabilityRoutes(deps));
  app.route("/", parameterRoutes(deps));
  app.route("/", blockerRoutes(deps));
  app.route("/", eventRoutes(deps));
  app.route("/", vmRoutes(deps));
  app.doc31("/openapi.json", {
    openapi: "3.1.0",
    info: {
      title: "ferry",
      version: VERSION,
      description:
        "Live migration of a guest between ferry services (QEMU's migration controller as REST + SSE)",
    },
  });
  app.get(
    "/",
    (c) =>
      deps.dashboard ? c.html(deps.dashboard) : c.json({
        name: "ferry",
        version: VERSION,
        api: "/openapi.json",
        events: "/migrations/events",
      }),
  );
  app.notFound((c) =>
    c.json<ErrorBody>({
      error: { code: "not-found", message: `No route ${c.req.method} ${c.req.path}` },
    }, 404)
  );
  app.onError((err, c) => {
    const mapped = domainError(err);
    if (mapped) return c.json(mapped.body, mapped.status);
    if (err instanceof HTTPException) {
      // Answers built by middleware (bearer auth: JSON body, WWW-Authenticate) go out as built.
      if (err.res) return err.getResponse();
      const code =
        ({ 400: "bad-request", 401: "unauthorized", 404: "not-found" } as Record<number, string>)[
          err.status
        ] ??
          `http-${err.status}`;
      return c.json<ErrorBody>(
        { error: { code, message: err.message || "Request failed" } },
        err.status,
      );
    }
    console.error("ferry: unexpected error:", err);
    return c.json<ErrorBody>({ error: { code: "internal", message: "Internal error" } }, 500);
  });
  return app;
}
