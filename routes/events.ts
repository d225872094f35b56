import { createRoute, z } from "@hono/zod-openapi";
import { streamSSE } from "hono/streaming";
import type { Engine, EngineEvent } from "../engine/engine.ts";
import { newRouter } from "./router.ts";

/** Keep-alive comment interval, ms: a comment goes out after this long without a write. */
export const KEEPALIVE_MS = 15_000;
/** Events a slow client may have queued before it is told to re-fetch (`reset`). */
export const MAX_QUEUED_EVENTS = 1024;
/** Least time between two progress events sent to one client (at most 10 per second). */
export const PROGRESS_INTERVAL_MS = 100;
/** Reconnection delay suggested to EventSource clients (`retry:` field), ms. */
export const RETRY_MS = 1000;

const EVENT_DOC = `Server-Sent Events. Every event's data is JSON and every event has an id
(the engine-wide id of the last event it covers, increasing). Events:

- \`hello\` on a fresh connection: \`{migration, incoming}\` snapshots.
- \`state\`: \`{from, to, time, error?}\` on every outgoing migration transition.
- \`pass\`: \`{pass, dirty_pages, time}\` on every dirty-log sync.
- \`warning\`: \`{code, message, time}\` when the operator should know something (the
  round trip alone exceeds the downtime limit, a stall action was taken, the channel
  failed during pre-copy and the migration waits in \`interrupted\`, it resumed and
  how much it saved); the migration's info lists them under \`warnings\`.
- \`progress\`: \`{info, time}\`, info as GET /migrations/current; at most 10 per second
  per client, coalesced (a client only ever gets the newest).
- \`incoming\`: \`{from, to, time, error?, info}\` on every destination transition.
- \`runstate\`: \`{from, to, time}\` guest run-state changes.
- \`reset\`: \`{reason, migration, incoming}\`: events were lost (the client fell more
  than ${MAX_QUEUED_EVENTS} events behind, or its Last-Event-ID is no longer kept);
  the snapshots replace them.

A client reconnecting with \`Last-Event-ID\` gets the events it missed from the last
${MAX_QUEUED_EVENTS} the engine kept (no hello), or a \`reset\`. A \`: keep-alive\`
comment is sent after ${KEEPALIVE_MS / 1000} s without any other write.`;

const events = createRoute({
  method: "get",
  path: "/migrations/events",
  summary: "Server-Sent Events: state, pass, progress, incoming and runstate changes",
  description: EVENT_DOC,
  request: {
    headers: z.object({
      "last-event-id": z.string().optional().openapi({
        description: "Resume after this event id (sent by EventSource when it reconnects)",
        example: "42",
      }),
    }),
  },
  responses: {
    200: {
      description: "An event stream; each event's data is JSON, each has an increasing id",
      content: {
        "text/event-stream": {
          schema: z.string().openapi({
            example: 'event: state\ndata: {"from":"setup","to":"active","time":1700000000000}\n' +
              "id: 7\n\n",
          }),
        },
      },
    },
  },
});

type Stamped = EngineEvent & { id: number };

/** The Last-Event-ID a client sent, or undefined for a fresh connection (or garbage). */
export function parseLastEventId(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d{1,15}$/.test(value.trim())) return undefined;
  return Number(value.trim());
}

/**
 * GET /migrations/events. Each client has its own bounded queue filled synchronously
 * by the engine's notifier, so a client that cannot keep up never slows the engine:
 * a newer progress event replaces an unsent older one, progress goes out at most
 * every {@link PROGRESS_INTERVAL_MS}, and a queue that reaches
 * {@link MAX_QUEUED_EVENTS} is dropped and replaced by one `reset` snapshot. Its
 * pauses (progress pacing, keep-alive) run on the engine's clock.
 */
export function eventRoutes(deps: { engine: Engine; keepAliveMs?: number }) {
  const { engine } = deps;
  const keepAliveMs = deps.keepAliveMs ?? KEEPALIVE_MS;
  return newRouter().openapi(events, (c) =>
    streamSSE(c, async (stream) => {
      const { clock } = engine;
      let queue: Stamped[] = [];
      /** A snapshot to send before anything queued: hello on connect, reset after a loss. */
      let snapshot: { event: "hello" | "reset"; reason?: string } | null = null;
      let wake: (() => void) | null = null;
      let closed = false;

      const enqueue = (event: Stamped) => {
        if (snapshot?.event === "reset") return; // the coming snapshot covers it
        if (event.type === "progress") {
          const i = queue.findIndex((e) => e.type === "progress");
          if (i >= 0) queue.splice(i, 1);
        }
        if (queue.length >= MAX_QUEUED_EVENTS) {
          queue = [];
          snapshot = { event: "reset", reason: "client-behind" };
        } else {
          queue.push(event);
        }
        wake?.();
      };

      // Subscribing and reading the replay buffer happen in one synchronous step,
      // so no event falls between them.
      const unsubscribe = engine.events.subscribe(enqueue);
      const lastEventId = parseLastEventId(c.req.header("last-event-id"));
      if (lastEventId === undefined) {
        snapshot = { event: "hello" };
      } else {
        const missed = engine.events.since(lastEventId);
        if (missed === null) snapshot = { event: "reset", reason: "events-expired" };
        else for (const e of missed) enqueue(e);
      }
      stream.onAbort(() => {
        closed = true;
        wake?.();
      });

      /** Waits until `time` on the engine's clock, or less when an event arrives or the client goes away. */
      const pause = async (time: number) => {
        const woken = new AbortController();
        wake = () => woken.abort();
        await clock.until(time, woken.signal).catch(() => {});
        wake = null;
      };

      let lastWrite = clock.now();
      let lastProgress = -Infinity;
      try {
        while (!closed && !stream.aborted) {
          if (snapshot) {
            // Taken synchronously: every queued event is covered by it.
            const { event, reason } = snapshot;
            const id = engine.events.lastId;
            const data = {
              ...(reason ? { reason } : {}),
              migration: engine.current(),
              incoming: engine.incomingInfo(),
            };
            snapshot = null;
            queue = [];
            await stream.writeSSE({
              event,
              id: String(id),
              data: JSON.stringify(data),
              ...(event === "hello" ? { retry: RETRY_MS } : {}),
            });
            lastWrite = clock.now();
            continue;
          }
          const head = queue[0];
          if (head) {
            if (head.type === "progress") {
              const due = lastProgress + PROGRESS_INTERVAL_MS;
              if (due > clock.now()) {
                // Events behind it wait too (ids stay in order); a newer progress
                // replaces it meanwhile.
                await pause(due);
                continue;
              }
              lastProgress = clock.now();
            }
            queue.shift();
            const { id, type, ...rest } = head;
            await stream.writeSSE({ id: String(id), event: type, data: JSON.stringify(rest) });
            lastWrite = clock.now();
            continue;
          }
          if (clock.now() - lastWrite < keepAliveMs) {
            await pause(lastWrite + keepAliveMs);
            continue;
          }
          await stream.write(": keep-alive\n\n");
          lastWrite = clock.now();
        }
      } finally {
        unsubscribe();
        queue = [];
      }
    }));
}
