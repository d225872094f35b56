import assert from "node:assert/strict";
import { readSse, type SseItem, SseParser } from "../../tools/sse.ts";
import { SseParser as DashboardSseParser } from "../../web/app.js";

/** A stream and what the WHATWG EventSource rules make of it. */
interface Case {
  name: string;
  stream: string;
  items: SseItem[];
  /** The reconnection time after the stream (undefined: never set). */
  retry?: number;
  /** The last event ID buffer after the stream. */
  lastEventId?: string;
}

const ev = (data: string, event = "message", id = ""): SseItem => ({ event, data, id });

const CASES: Case[] = [
  { name: "LF line ends", stream: "event: a\ndata: 1\n\n", items: [ev("1", "a")] },
  { name: "CRLF line ends", stream: "event: a\r\ndata: 1\r\n\r\n", items: [ev("1", "a")] },
  { name: "CR line ends", stream: "event: a\rdata: 1\r\r", items: [ev("1", "a")] },
  {
    name: "mixed line ends; a CR then an LF is one line end, an LF then a CR two",
    stream: "data: a\r\ndata: b\rdata: c\n\r\ndata: d\n\r",
    items: [ev("a\nb\nc"), ev("d")],
  },
  {
    name: "multi-line data joins with LF; an empty data line adds an empty line",
    stream: "data: a\ndata:\ndata: b\n\n",
    items: [ev("a\n\nb")],
  },
  {
    name: "a field without colon has an empty value",
    stream: "data\n\nevent\ndata\ndata\n\n",
    items: [ev(""), ev("\n")],
  },
  {
    name: "one space after the colon is stripped, only one, and only a space",
    stream: "data:  two\n\ndata:none\n\ndata:\tx\n\nevent:  e\ndata: a:b\n\n",
    items: [ev(" two"), ev("none"), ev("\tx"), ev("a:b", " e")],
  },
  {
    name: "no data: nothing dispatched, and the event type does not carry over",
    stream: "event: lost\n\ndata: a\n\n",
    items: [ev("a")],
  },
  {
    name: "id persists across events; an empty id: resets it",
    stream: "id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n",
    items: [ev("a", "message", "7"), ev("b", "message", "7"), ev("c")],
    lastEventId: "",
  },
  {
    name: "id set by an event without data still counts",
    stream: "id: 5\n\ndata: a\n\n",
    items: [ev("a", "message", "5")],
    lastEventId: "5",
  },
  {
    name: "an id containing NUL is ignored",
    stream: "id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n",
    items: [ev("a", "message", "1"), ev("b", "message", "1")],
    lastEventId: "1",
  },
  {
    name: "retry: digits set the reconnection time",
    stream: "retry: 1500\n",
    items: [],
    retry: 1500,
  },
  {
    name: "retry: anything but digits is ignored",
    stream: "retry: 20\nretry: 15x\nretry: -1\nretry: 1.5\nretry:  30\nretry:\nretry\n",
    items: [],
    retry: 20,
  },
  {
    name: "comments: reported apart, ignored by events, also in the middle of one",
    stream: ": hello\n:\n:x\ndata: a\n: in between\ndata: b\n\n",
    items: [
      { comment: "hello" },
      { comment: "" },
      { comment: "x" },
      { comment: "in between" },
      ev("a\nb"),
    ],
  },
  { name: "a BOM at the start is skipped", stream: "\uFEFFdata: a\n\n", items: [ev("a")] },
  {
    name: "only one BOM is skipped, and only at the start",
    stream: "\uFEFF\uFEFFdata: a\n\ndata: b\n\n\uFEFFdata: c\n\n",
    items: [ev("b")],
  },
  {
    name: "unknown and differently cased fields are ignored",
    stream: "foo: bar\nData: x\nEVENT: y\ndata: a\n\n",
    items: [ev("a")],
  },
  {
    name: "an event is dispatched only by a blank line: the unfinished last one is discarded",
    stream: "data: a\n\ndata: b\nid: 3\n",
    items: [ev("a")],
    lastEventId: "3",
  },
  {
    name: "a last line without its line end is discarded",
    stream: "data: a\n\ndata: b",
    items: [ev("a")],
  },
  { name: "UTF-8 beyond ASCII", stream: "data: é € 😀\n\n", items: [ev("é € 😀")] },
];

/** Something with ferry's parser's push(): tools/sse.ts's or the dashboard's. */
interface Parser {
  push(chunk: string | Uint8Array): SseItem[];
  retry: number | undefined;
  lastEventId: string;
}

/** Feeds `chunks` to a fresh parser; returns what it produced and its state after. */
function feed(make: () => Parser, chunks: (string | Uint8Array)[]) {
  const parser = make();
  const items = chunks.flatMap((c) => parser.push(c));
  (parser as Partial<SseParser>).end?.();
  return { items, retry: parser.retry, lastEventId: parser.lastEventId };
}

/** Every way to cut `bytes` in two, plus one byte at a time. */
function splits(bytes: Uint8Array): Uint8Array[][] {
  const ways: Uint8Array[][] = [];
  for (let i = 0; i <= bytes.length; i++) ways.push([bytes.subarray(0, i), bytes.subarray(i)]);
  ways.push(Array.from(bytes, (_, i) => bytes.subarray(i, i + 1)));
  return ways;
}

const expected = (c: Case) => ({
  items: c.items,
  retry: c.retry,
  lastEventId: c.lastEventId ?? "",
});

for (const c of CASES) {
  Deno.test(`SseParser: ${c.name}`, () => {
    const bytes = new TextEncoder().encode(c.stream);
    for (const chunks of splits(bytes)) {
      assert.deepEqual(
        feed(() => new SseParser(), chunks),
        expected(c),
        `chunks ${JSON.stringify(chunks.map((b) => new TextDecoder().decode(b)))}`,
      );
    }
  });
}

Deno.test("SseParser takes text as well as bytes, a CRLF split across two pushes included", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data: a\r"), []);
  assert.deepEqual(p.push("\n\r"), [ev("a")]);
  assert.deepEqual(p.push("\n"), [], "that LF ended an empty line of its own: nothing pending");
  assert.deepEqual(p.push("data: b\r\r"), [ev("b")]);
});

Deno.test("SseParser.end() drops a pending event; the parser can read on", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data: a\n"), []);
  p.end();
  assert.deepEqual(p.push("\ndata: b\n\n"), [ev("b")]);
});

Deno.test("readSse yields the events of a body (no comments), none unfinished, and stops on break", async () => {
  const body = (text: string, cancelled?: () => void) =>
    new ReadableStream<Uint8Array>({
      start(c) {
        for (const b of new TextEncoder().encode(text)) c.enqueue(new Uint8Array([b]));
        c.close();
      },
      cancel: cancelled,
    });
  const seen = [];
  for await (
    const e of readSse(body(": hi\r\nevent: x\r\ndata: 1\r\nid: 2\r\n\r\ndata: lost\r\n"))
  ) {
    seen.push(e);
  }
  assert.deepEqual(seen, [{ event: "x", data: "1", id: "2" }]);

  let cancelled = false;
  for await (const _ of readSse(body("data: 1\n\ndata: 2\n\n", () => cancelled = true))) break;
  assert.ok(cancelled, "leaving the loop cancels the body");
});

// The dashboard (web/app.js) runs its own copy of the parser: the same bytes, cut
// anywhere, must give the same events, comments, retry and last event ID.
for (const c of CASES) {
  Deno.test(`the dashboard's SseParser agrees with tools/sse.ts: ${c.name}`, () => {
    const bytes = new TextEncoder().encode(c.stream);
    for (const chunks of splits(bytes)) {
      const ours = feed(() => new SseParser(), chunks);
      const dashboard = feed(() => new DashboardSseParser(), chunks);
      assert.deepEqual(dashboard, ours, `chunks ${JSON.stringify(chunks.map((b) => [...b]))}`);
    }
  });
}
