import type { Context, MiddlewareHandler } from "hono";
import { bearerAuth } from "hono/bearer-auth";
import { timingSafeEqual } from "hono/utils/buffer";
import type { AuthBackoff } from "./auth_backoff.ts";
import { ApiError, type ErrorBody } from "./router.ts";

/** What {@link tokenAuth} checks against. */
export interface TokenAuthOptions {
  /** The bearer token every request but `GET /` must carry. */
  readonly token: string;
  /** Failed authentications per remote address, and their lockouts. */
  readonly backoff: AuthBackoff;
}

function unauthorized(message: string): ErrorBody {
  return { error: { code: "unauthorized", message } };
}

/**
 * The remote address of a request served by Deno.serve (its ServeHandlerInfo is
 * hono's env); "local" for in-process requests, which have none.
 */
export function remoteAddress(c: Context): string {
  const env = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  return env?.remoteAddr?.hostname ?? "local";
}

const BEARER = /^Bearer +([A-Za-z0-9._~+/-]+=*)$/i;

/**
 * Requires `Authorization: Bearer <token>` (hono's bearerAuth: 401 `unauthorized`,
 * 400 for a malformed header, the token compared in constant time) on every request
 * but `GET /`, the dashboard page, which holds no data and asks for the token.
 * Each wrong token locks its remote address out for a while (see AuthBackoff):
 * meanwhile requests from there answer 429 `too-many-auth-failures` with
 * Retry-After, unless they carry the right token, which always passes, so
 * someone sharing the owner's address (every local user on loopback) cannot lock
 * the owner out.
 */
export function tokenAuth(opts: TokenAuthOptions): MiddlewareHandler {
  const { token, backoff } = opts;
  const auth = bearerAuth({
    verifyToken: async (presented, c) => {
      if (await timingSafeEqual(token, presented)) return true;
      backoff.fail(remoteAddress(c));
      return false;
    },
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
  return async (c, next) => {
    if (c.req.method === "GET" && c.req.path === "/") return await next();
    const wait = backoff.lockedFor(remoteAddress(c));
    if (wait > 0) {
      // Only the right token gets through a lockout; nothing else is counted or answered 401.
      const presented = BEARER.exec(c.req.header("authorization") ?? "")?.[1];
      if (presented !== undefined && await timingSafeEqual(token, presented)) return await next();
      const seconds = Math.max(1, Math.ceil(wait / 1000));
      throw new ApiError(
        429,
        "too-many-auth-failures",
        `Too many failed authentications from this address: try again in ${seconds} s ` +
          "(a request with the right token is not held back)",
        { "retry-after": String(seconds) },
      );
    }
    return await auth(c, next);
  };
}
