import { OpenAPIHono } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { EngineError, type EngineErrorCode } from "../engine/errors.ts";
import { TransportError } from "../transports/transport.ts";

/** HTTP status for each engine error code. */
export const ENGINE_STATUS: Record<EngineErrorCode, ContentfulStatusCode> = {
  "migration-active": 409,
  "migration-blocked": 409,
  "capability-unsupported": 400,
  "capability-conflict": 409,
  "invalid-parameter": 400,
  "incoming-active": 409,
  "not-incoming": 409,
  "not-paused": 409,
  "migration-not-found": 404,
  "guest-incomplete": 409,
  "guest-not-runnable": 409,
  "guest-running": 409,
  "not-interrupted": 409,
  "resume-refused": 409,
  "blocker-not-found": 404,
};

/** HTTP status for each transport error code. */
export const TRANSPORT_STATUS: Record<TransportError["code"], ContentfulStatusCode> = {
  "bad-uri": 400,
  "unknown-protocol": 400,
  "transport-unavailable": 400,
  "exec-disabled": 403,
  "insecure-migration": 403,
  "bad-fd": 400,
  "connect-failed": 502,
  "listen-failed": 409,
};

/** The JSON body of an error answer. */
export interface ErrorBody {
  error: { code: string; message: string; field?: string; reasons?: string[] };
}

/**
 * An error answer raised by ferry's own middleware and routes (a refused host, a
 * cross-origin request, a lockout, a wrong method): its status, code, message and
 * any headers the answer needs (Allow, Retry-After).
 */
export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** What {@link domainError} builds: status, JSON body and extra headers. */
export interface ErrorAnswer {
  status: ContentfulStatusCode;
  body: ErrorBody;
  headers?: Record<string, string>;
}

/** Builds the error answer for a thrown API, engine or transport error; null for others. */
export function domainError(e: unknown): ErrorAnswer | null {
  if (e instanceof ApiError) {
    return {
      status: e.status,
      body: { error: { code: e.code, message: e.message } },
      headers: e.headers,
    };
  }
  if (e instanceof EngineError) {
    const body: ErrorBody = { error: { code: e.code, message: e.message } };
    const reasons = e.details?.reasons;
    if (Array.isArray(reasons)) body.error.reasons = reasons.map(String);
    const field = e.details?.field ?? e.details?.capability;
    if (typeof field === "string") body.error.field = field;
    return { status: ENGINE_STATUS[e.code], body };
  }
  if (e instanceof TransportError) {
    return {
      status: TRANSPORT_STATUS[e.code],
      body: { error: { code: e.code, message: e.message, field: "uri" } },
    };
  }
  return null;
}

interface ZodIssueLike {
  path: PropertyKey[];
  message: string;
  code?: string;
  keys?: string[];
}

/** Turns a zod failure into a 400 answer naming the first bad field. */
export function validationError(c: Context, issues: readonly ZodIssueLike[]): Response {
  const issue = issues[0];
  let field = issue?.path.map(String).join(".") ?? "";
  if (issue?.code === "unrecognized_keys" && issue.keys?.length) {
    // A nested object's unknown key is named with its path (`parameters.downtime`).
    field = [field, issue.keys.join(",")].filter((s) => s !== "").join(".");
  }
  const message = issue
    ? field
      ? `Invalid field "${field}": ${issue.message}`
      : `Invalid request body: ${issue.message}`
    : "Invalid request";
  const body: ErrorBody = { error: { code: "invalid-request", message } };
  if (field) body.error.field = field;
  return c.json(body, 400);
}

/**
 * A new route group. Request validation failures answer 400 with the JSON error
 * shape naming the field, the same way in every group.
 */
export function newRouter(): OpenAPIHono {
  return new OpenAPIHono({
    defaultHook: (result, c) => {
      if (!result.success) return validationError(c, result.error.issues);
      return undefined;
    },
  });
}
