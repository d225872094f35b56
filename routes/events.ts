import { createRoute, z } from "@hono/zod-openapi";
import { streamSSE } from "hono/streaming";
import type { Engine, EngineEvent } from "../engine/engine.ts";
import { newRouter } from "./router.ts";

/** Keep-alive comment interval, ms. */
export const KEEPALIVE_MS = 15_000;
/** Events a slow client may have queued before it is told to re-fetch (`reset`). */
export const MAX_QUEUED_EVENTS = 1024;

const events = createRoute({
  method: "get",
  path: "/migrations/events",
  summary: "Server-Sent Events: state, pass, progress, incoming and runstate changes",
  responses: {
    200: {
      description: "An event stream; each event's data is JSON, each has an increasing id",
      content: { "text/event-stream": { schema: z.string() } },
    },
  },
});

/**
 * GET /migrations/events. Each client has its own bounded queue: a client that
 * cannot keep up never slows the engine; progress events replace an unsent older
 * progress event, and an overflowing queue is replaced by one `reset` event.
 */
export function eventRoutes(deps: { engine: Engine; keepAliveMs?: number }) {
  const { engine } = deps;
  const keepAliveMs = deps.keepAliveMs ?? KEEPALIVE_MS;
  return newRouter().openapi(events, (c) =>
    streamSSE(c, async (stream) => {
      type Stamped = EngineEvent & { id: number };
      let queue: Stamped[] = [];
      let wake: (() => void) | null = null;
      let reset = false;
      const unsubscribe = engine.events.subscribe((event) => {
        if (event.type === "progress") {
          const i = queue.findIndex((e) => e.type === "progress");
          if (i >= 0) queue.splice(i, 1);
        }
        if (queue.length >= MAX_QUEUED_EVENTS) {
          queue = [];
          reset = true;
        }
        queue.push(event);
        wake?.();
      });
      let closed = false;
      stream.onAbort(() => {
        closed = true;
        wake?.();
      });
      try {
        await stream.writeSSE({
          event: "hello",
          data: JSON.stringify({ migration: engine.current(), incoming: engine.incomingInfo() }),
        });
        while (!closed) {
          if (reset) {
            reset = false;
            await stream.writeSSE({ event: "reset", data: "{}" });
          }
          const batch = queue;
          queue = [];
          for (const e of batch) {
            const { id, type, ...rest } = e;
            await stream.writeSSE({ id: String(id), event: type, data: JSON.stringify(rest) });
          }
          if (queue.length > 0 || reset) continue;
          let timer: ReturnType<typeof setTimeout> | undefined;
          await new Promise<void>((resolve) => {
            wake = resolve;
            timer = setTimeout(resolve, keepAliveMs);
          });
          clearTimeout(timer);
          wake = null;
          if (!closed && queue.length === 0 && !reset) await stream.write(": keep-alive\n\n");
        }
      } finally {
        unsubscribe();
      }
    }));
}
