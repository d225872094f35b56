/**
 * GET /vm/console (SSE) and POST /vm/console over a stand-in console: history
 * first, live output after, resumption with Last-Event-ID, input and its errors,
 * and a clear 409 on a guest without a console.
 */
import assert from "node:assert/strict";
import { ConsoleBuffer } from "../../vm/console_buffer.ts";
import { VmError } from "../../vm/error.ts";
import type { GuestConsole } from "../../routes/console.ts";
import { call, testApp } from "../helpers/app.ts";
import { SseReader } from "./_helpers.ts";

const enc = (text: string) => new TextEncoder().encode(text);

function standIn(): GuestConsole & { typed: string[]; running: boolean } {
  const c = {
    buffer: new ConsoleBuffer(1024),
    typed: [] as string[],
    running: true,
    send(text: string) {
      if (!c.running) throw new VmError("invalid-run-state", "The guest is paused");
      c.typed.push(text);
    },
  };
  return c;
}

async function open(
  app: ReturnType<typeof testApp>["app"],
  path = "/vm/console",
  headers: Record<string, string> = {},
): Promise<SseReader> {
  const res = await app.request(path, { headers });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  return new SseReader(res.body!);
}

Deno.test("GET /vm/console replays history, then streams output as it comes, with byte offsets", async () => {
  const console = standIn();
  console.buffer.append(enc("boot line\n"));
  console.buffer.append(enc("tick 1 abc\n"));
  const { app, engine } = testApp({ app: { console } });
  const sse = await open(app, "/vm/console?replay=11");
  const first = await sse.next();
  assert.equal(first?.event, "output");
  assert.deepEqual(JSON.parse(first!.data!), { offset: 10, text: "tick 1 abc\n" });
  assert.equal(first?.id, "21");
  console.buffer.append(enc("tick 2 d\u00e9f\n"));
  const next = await sse.until((f) => f.event === "output");
  assert.deepEqual(JSON.parse(next.at(-1)!.data!), { offset: 21, text: "tick 2 d\u00e9f\n" });
  assert.equal(next.at(-1)!.id, "33"); // é is two bytes
  await sse.cancel();
  await engine.close();
});

Deno.test("GET /vm/console with Last-Event-ID sends only what the client missed", async () => {
  const console = standIn();
  console.buffer.append(enc("one\ntwo\nthree\n"));
  const { app, engine } = testApp({ app: { console } });
  const sse = await open(app, "/vm/console", { "last-event-id": "8" });
  const frame = await sse.next();
  assert.deepEqual(JSON.parse(frame!.data!), { offset: 8, text: "three\n" });
  await sse.cancel();
  await engine.close();
});

Deno.test("POST /vm/console types input; a paused guest answers 409; a bad body 400 naming the field", async () => {
  const console = standIn();
  const { app, engine } = testApp({ app: { console } });
  const ok = await call(app, "POST", "/vm/console", { input: "echo $((6*7))\n" });
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.body, { sent: 14 });
  assert.deepEqual(console.typed, ["echo $((6*7))\n"]);
  console.running = false;
  const paused = await call(app, "POST", "/vm/console", { input: "x" });
  assert.equal(paused.status, 409);
  assert.equal(paused.body.error.code, "invalid-run-state");
  for (const body of [{}, { input: "" }, { input: 5 }, { input: "x", extra: 1 }]) {
    const bad = await call(app, "POST", "/vm/console", body);
    assert.equal(bad.status, 400, JSON.stringify(body));
    assert.match(bad.body.error.field, /input|extra/);
  }
  assert.equal(console.typed.length, 1);
  await engine.close();
});

Deno.test("a guest without a console answers 409 no-console on both routes", async () => {
  const { app, engine } = testApp();
  for (const [method, body] of [["GET", undefined], ["POST", { input: "x" }]] as const) {
    const res = await call(app, method, "/vm/console", body);
    assert.equal(res.status, 409);
    assert.equal(res.body.error.code, "no-console");
    assert.match(res.body.error.message, /--guest x86/);
  }
  await engine.close();
});
