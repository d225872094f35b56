import type { MiddlewareHandler } from "hono";
import { ApiError } from "./router.ts";

/** The methods that change something, which a page of another site must never send. */
export const STATE_CHANGING = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** True when `origin` (an Origin header) names the same host and port as `host` (a Host header). */
export function sameOrigin(origin: string, host: string): boolean {
  let from: URL;
  let self: URL;
  try {
    from = new URL(origin);
    self = new URL(`http://${host}/`);
  } catch {
    return false; // "null" (sandboxed pages, file:, some redirects) lands here
  }
  // Jupyter's rule: the same host[:port], whether the page came over http or through
  // a TLS proxy (each scheme's default port is left out on both sides).
  return (from.protocol === "http:" || from.protocol === "https:") && origin === from.origin &&
    from.host === self.host;
}

/**
 * Refuses (403 `cross-origin`) a state-changing request (POST, PUT, PATCH, DELETE)
 * that a browser marks as coming from another site: `Sec-Fetch-Site: cross-site` or
 * `same-site`, or an `Origin` (`null` included) that is not this API's own. Clients
 * that are not browsers send neither header and pass; so do ferry's own pages.
 */
export function originCheck(): MiddlewareHandler {
  return async (c, next) => {
    const method = c.req.method;
    if (!STATE_CHANGING.has(method)) return await next();
    const site = c.req.header("sec-fetch-site");
    if (site === "cross-site" || site === "same-site") {
      throw new ApiError(
        403,
        "cross-origin",
        `Refusing ${method} ${c.req.path} sent by a page of another site ` +
          `(Sec-Fetch-Site: ${site}): only ferry's own pages and non-browser clients may change state`,
      );
    }
    const origin = c.req.header("origin");
    const host = c.req.header("host") ?? new URL(c.req.url).host;
    if (origin !== undefined && !sameOrigin(origin, host)) {
      const shown = origin.length > 100 ? `${origin.slice(0, 100)}…` : origin;
      throw new ApiError(
        403,
        "cross-origin",
        `Refusing ${method} ${c.req.path} from origin "${shown}": only ferry's own pages ` +
          `(http://${host}) and non-browser clients may change state`,
      );
    }
    await next();
  };
}
