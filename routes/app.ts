import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { methodNotAllowed } from "hono/method-not-allowed";
import type { Engine } from "../engine/engine.ts";
import { AuthBackoff } from "./auth_backoff.ts";
import { blockerRoutes } from "./blockers.ts";
import { capabilityRoutes } from "./capabilities.ts";
import { consoleRoutes, type GuestConsole } from "./console.ts";
import { dirtyRateRoutes } from "./dirty_rate.ts";
import { eventRoutes } from "./events.ts";
import { hostCheck, type HostCheckOptions } from "./host_check.ts";
import { historyRoutes } from "./history.ts";
import { incomingRoutes } from "./incoming.ts";
import { jsonBodyOnly } from "./json_body.ts";
import { metricsRoutes } from "./metrics.ts";
import { migrationRoutes } from "./migrations.ts";
import { originCheck } from "./origin_check.ts";
import { parameterRoutes } from "./parameters.ts";
import { planRoutes } from "./plan.ts";
import { ApiError, domainError, type ErrorBody, newRouter } from "./router.ts";
import { tokenAuth } from "./token_auth.ts";
import { type VmInspector, vmRoutes } from "./vm.ts";

/** What the HTTP API is built from. */
export interface AppDeps {
  readonly engine: Engine;
  readonly vm: VmInspector;
  /** The guest's serial console, when it has one (the x86 guest). */
  readonly console?: GuestConsole;
  /** SSE keep-alive interval (ms of the engine's clock); tests shorten it. */
  readonly keepAliveMs?: number;
  /** The dashboard page served at GET /, if any. */
  readonly dashboard?: string;
  /**
   * When set, every request needs `Authorization: Bearer <token>` — except GET /,
   * the dashboard page, which holds no data and asks the user for the token.
   * (main.ts always sets one: given, or generated at start.)
   */
  readonly token?: string;
  /** The host names the API answers to besides loopback ones (default: loopback only). */
  readonly hosts?: HostCheckOptions;
  /** Failed authentications and their lockouts (tests inject one with a fake clock). */
  readonly authBackoff?: AuthBackoff;
}

/** Largest request body accepted (every JSON body ferry takes is far smaller). */
export const MAX_BODY_BYTES = 64 << 10;

/** The code of an HTTPException hono or a validator raised, by status. */
const HTTP_CODES: Record<number, string> = {
  400: "bad-request",
  401: "unauthorized",
  403: "forbidden",
  404: "not-found",
  405: "method-not-allowed",
  413: "payload-too-large",
  415: "unsupported-media-type",
  429: "too-many-requests",
};

/** ferry's version, reported by /openapi.json. */
export const VERSION = "0.1.0";

/** The head of the OpenAPI document (the rest comes from the routes' zod schemas). */
export const OPENAPI_HEAD = {
  openapi: "3.1.0",
  info: {
    title: "ferry",
    version: VERSION,
    description:
      "Live migration of a guest between ferry services (QEMU's migration controller as REST + SSE)",
  },
} as const;

/**
 * Builds the whole REST + SSE API: mounts every route group, renders every error
 * as `{ error: { code, message } }`, and serves the OpenAPI document generated
 * from the same zod schemas that validate requests. Every request first passes
 * the host check (DNS rebinding), then the origin check and the JSON-only body
 * rule (cross-site requests), then the bearer token; a wrong method on a known
 * path answers 405 with Allow.
 */
export function createApp(deps: AppDeps) {
  const app = newRouter();
  app.use("*", hostCheck(deps.hosts ?? { listen: "127.0.0.1" }));
  app.use("*", originCheck());
  app.use("*", jsonBodyOnly());
  if (deps.token) {
    const backoff = deps.authBackoff ?? new AuthBackoff({ now: () => deps.engine.clock.now() });
    app.use("*", tokenAuth({ token: deps.token, backoff }));
  }
  app.use(
    "*",
    methodNotAllowed({
      app,
      onMethodNotAllowed: (c, methods) => {
        throw new ApiError(
          405,
          "method-not-allowed",
          `${c.req.method} is not allowed on ${c.req.path}: it takes ${methods.join(", ")}`,
          { allow: methods.join(", ") },
        );
      },
    }),
  );
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
  app.route("/", consoleRoutes(deps));
  app.route("/", dirtyRateRoutes(deps));
  app.route("/", planRoutes(deps));
  app.route("/", metricsRoutes(deps));
  // After every /migrations/<word> route: /migrations/{id} must not shadow them.
  app.route("/", historyRoutes(deps));
  app.doc31("/openapi.json", OPENAPI_HEAD);
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
    if (mapped) return c.json(mapped.body, mapped.status, mapped.headers);
    if (err instanceof HTTPException) {
      // Answers built by middleware (bearer auth: JSON body, WWW-Authenticate) go out as built.
      if (err.res) return err.getResponse();
      const code = HTTP_CODES[err.status] ?? `http-${err.status}`;
      const message = err.status === 415
        ? "A request body must be JSON sent with Content-Type: application/json"
        : err.message || "Request failed";
      return c.json<ErrorBody>({ error: { code, message } }, err.status);
    }
    console.error("ferry: unexpected error:", err);
    return c.json<ErrorBody>({ error: { code: "internal", message: "Internal error" } }, 500);
  });
  return app;
}
