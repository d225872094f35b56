import { createRoute, z } from "@hono/zod-openapi";
import { streamSSE } from "hono/streaming";
import type { Engine } from "../engine/engine.ts";
import type { ConsoleBuffer } from "../vm/console_buffer.ts";
import { VmError } from "../vm/error.ts";
import { KEEPALIVE_MS, parseLastEventId, RETRY_MS } from "./events.ts";
import { ApiError, newRouter } from "./router.ts";
import {
  ConsoleInputSchema,
  ConsoleSentSchema,
  errorResponses,
  jsonResponse,
  queryInteger,
} from "./schemas.ts";

/** A guest's serial console, as the console routes use it. */
export interface GuestConsole {
  /** Recent output and new output as it arrives. */
  readonly buffer: ConsoleBuffer;
  /** Types text into the console; throws VmError when the guest cannot take input now. */
  send(text: string): void;
}

/** Output replayed to a new client unless it asks otherwise (`?replay=`). */
export const DEFAULT_REPLAY_BYTES = 16 * 1024;
/** Output chunks a slow client may have queued before it is cut off. */
const MAX_QUEUED_CHUNKS = 4096;

const CONSOLE_DOC = `Server-Sent Events of the guest's serial console (the x86 guest).
Each \`output\` event's data is \`{offset, text}\`: \`offset\` counts the console's bytes
from its start (on a migration's destination, from the start of the source's history
it carried over), \`text\` is the bytes decoded as UTF-8. The event id is the offset
after the chunk: a client reconnecting with \`Last-Event-ID\` gets what it missed, as
far as the kept history (64 KiB) reaches. A new client first gets the last
\`replay\` bytes. A \`: keep-alive\` comment follows ${KEEPALIVE_MS / 1000} s without output.`;

const OutputQuery = z.object({
  replay: queryInteger("the bytes of history to replay", { min: 0, max: 64 * 1024 }).default(
    DEFAULT_REPLAY_BYTES,
  ).openapi({ example: 16384 }),
});

const output = createRoute({
  method: "get",
  path: "/vm/console",
  summary: "Server-Sent Events: the guest's serial console output, history first",
  description: CONSOLE_DOC,
  request: {
    query: OutputQuery,
    headers: z.object({
      "last-event-id": z.string().optional().openapi({
        description: "Resume after this console offset (sent by EventSource when it reconnects)",
      }),
    }),
  },
  responses: {
    200: {
      description: "An event stream of `output` events",
      content: {
        "text/event-stream": {
          schema: z.string().openapi({
            example: 'event: output\ndata: {"offset":0,"text":"tick 1 5f0c…\\n"}\nid: 23\n\n',
          }),
        },
      },
    },
    ...errorResponses(409),
  },
});

const input = createRoute({
  method: "post",
  path: "/vm/console",
  summary: "Type into the guest's serial console (the guest must be running)",
  request: {
    body: { content: { "application/json": { schema: ConsoleInputSchema } }, required: true },
  },
  responses: {
    200: jsonResponse(ConsoleSentSchema, "The text was typed"),
    ...errorResponses(400, 409),
  },
});

function noConsole(): ApiError {
  return new ApiError(
    409,
    "no-console",
    "This guest has no console: the synthetic guest has none; start ferry with --guest x86",
  );
}

/**
 * GET /vm/console (SSE) and POST /vm/console. Each client has a bounded queue
 * filled synchronously by the console's listener, so a slow client never slows
 * the guest; one that falls {@link MAX_QUEUED_CHUNKS} chunks behind is
 * disconnected (it may reconnect with Last-Event-ID).
 */
export function consoleRoutes(
  deps: { engine: Engine; console?: GuestConsole; keepAliveMs?: number },
) {
  const { engine } = deps;
  const keepAliveMs = deps.keepAliveMs ?? KEEPALIVE_MS;
  return newRouter()
    .openapi(output, (c) => {
      const guestConsole = deps.console;
      if (!guestConsole) throw noConsole();
      const { replay } = c.req.valid("query");
      const resumeAt = parseLastEventId(c.req.header("last-event-id"));
      return streamSSE(c, async (stream) => {
        const { clock } = engine;
        const buffer = guestConsole.buffer;
        const decoder = new TextDecoder("utf-8");
        let queue: { bytes: Uint8Array; offset: number }[] = [];
        let wake: (() => void) | null = null;
        let closed = false;
        let behind = false;
        // Subscribing and taking the history happen in one synchronous step.
        const unsubscribe = buffer.subscribe((bytes, offset) => {
          if (queue.length >= MAX_QUEUED_CHUNKS) behind = true;
          else queue.push({ bytes, offset });
          wake?.();
        });
        const history = buffer.tail(
          resumeAt === undefined ? replay : Math.max(0, buffer.total - resumeAt),
        );
        if (history.bytes.length > 0) queue.push(history);
        stream.onAbort(() => {
          closed = true;
          wake?.();
        });
        const pause = async (time: number) => {
          const woken = new AbortController();
          wake = () => woken.abort();
          await clock.until(time, woken.signal).catch(() => {});
          wake = null;
        };
        let lastWrite = clock.now();
        let first = true;
        try {
          while (!closed && !stream.aborted && !behind) {
            const head = queue.shift();
            if (head) {
              const text = decoder.decode(head.bytes, { stream: true });
              await stream.writeSSE({
                event: "output",
                id: String(head.offset + head.bytes.length),
                data: JSON.stringify({ offset: head.offset, text }),
                ...(first ? { retry: RETRY_MS } : {}),
              });
              first = false;
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
      });
    })
    .openapi(input, (c) => {
      const guestConsole = deps.console;
      if (!guestConsole) throw noConsole();
      const { input } = c.req.valid("json");
      try {
        guestConsole.send(input);
      } catch (e) {
        if (e instanceof VmError) throw new ApiError(409, e.code, e.message);
        throw e;
      }
      return c.json({ sent: input.length }, 200);
    });
}
