import type { MiddlewareHandler } from "hono";
import { ApiError } from "./router.ts";
import { STATE_CHANGING } from "./origin_check.ts";

/** True for `application/json`, with or without parameters (`; charset=utf-8`). */
export function isJsonType(contentType: string): boolean {
  return contentType.split(";")[0].trim().toLowerCase() === "application/json";
}

/**
 * Refuses (415 `unsupported-media-type`) a state-changing request whose body is not
 * declared `application/json`. The types a web form or a cross-site "simple"
 * request may send (text/plain, form encodings) never reach a route, while
 * `curl -X POST …/vm/stop` without a body still works.
 */
export function jsonBodyOnly(): MiddlewareHandler {
  return async (c, next) => {
    if (!STATE_CHANGING.has(c.req.method)) return await next();
    const type = c.req.header("content-type");
    const length = c.req.header("content-length");
    const empty = length !== undefined && Number(length) === 0;
    const framed = length !== undefined || c.req.header("transfer-encoding") !== undefined;
    const refused = type !== undefined ? !isJsonType(type) && !empty : framed && !empty;
    if (refused) {
      throw new ApiError(
        415,
        "unsupported-media-type",
        `A request body must be JSON sent with Content-Type: application/json` +
          (type === undefined ? " (this one has no Content-Type)" : `, not ${type.slice(0, 100)}`),
      );
    }
    await next();
  };
}
