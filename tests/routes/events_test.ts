import assert from "node:assert/strict";
import { MemoryTransports } from "../../transports/memory.ts";
import { call, testApp } from "../helpers/app.ts";
import { sourceApp, type SseFrame, SseReader, waitFor } from "./_helpers.ts";

const FINAL = new Set(["completed", "failed", "cancelled"]);

/** Opens the event stream of `app` and checks the answer's headers. */
async function openEvents(app: ReturnType<typeof testApp>["app"]): Promise<SseReader> {
  const res = await app.request("/migrations/events");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  assert.equal(res.headers.get("cache-control"), "no-cache");
  assert.ok(res.body);
  return new SseReader(res.body);
}

function data(frame: SseFrame) {
  assert.ok(frame.data !== undefined, `frame ${frame.event} has data`);
  return JSON.parse(frame.data);
}

Deno.test("GET /migrations/events answers text/event-stream starting with a hello snapshot", async () => {
  const { app, engine } = testApp();
  const sse = await openEvents(app);
  assert.equal(engine.events.size, 1);
  const hello = await sse.next();
  assert.ok(hello);
  assert.equal(hello.event, "hello");
  assert.deepEqual(data(hello), {
    migration: { status: "none" },
    incoming: { status: "none", bytes_received: 0 },
  });
  await sse.cancel();
  await waitFor(() => engine.events.size === 0, "the SSE listener to unsubscribe");
  await engine.close();
});

Deno.test("GET /migrations/events streams state events in order, pass events and keep-alives during a migration", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const src = await sourceApp(transports);
  assert.equal((await call(src.app, "POST", "/vm/start")).status, 200);
  const sse = await openEvents(src.app);
  assert.equal((await sse.next())?.event, "hello");

  const uri = "tcp:dst:5000";
  assert.equal((await call(dst.app, "POST", "/migrations/incoming", { uri })).status, 202);
  assert.equal((await call(src.app, "POST", "/migrations", { uri })).status, 202);
  const frames = await sse.until((f) => f.event === "state" && FINAL.has(data(f).to));
  await src.engine.migration!.done;
  await dst.engine.incoming!.done;

  // Every event carries an id, and the ids increase.
  const ids = frames.filter((f) => f.event !== undefined).map((f) => Number(f.id));
  assert.ok(ids.length > 0);
  for (const id of ids) assert.ok(Number.isInteger(id) && id > 0, `id ${id}`);
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], `ids ${ids}`);

  const states = frames.filter((f) => f.event === "state").map(data);
  assert.deepEqual(states.map((s) => [s.from, s.to]), [
    ["none", "setup"],
    ["setup", "active"],
    ["active", "completed"],
  ]);
  for (const s of states) {
    assert.equal(typeof s.time, "number");
    assert.equal(s.id, undefined, "the id travels in the id: line, not the data");
    assert.equal(s.type, undefined, "the type travels in the event: line, not the data");
  }

  const passes = frames.filter((f) => f.event === "pass").map(data);
  assert.ok(passes.length >= 1, "at least one pass event");
  for (const p of passes) {
    assert.equal(typeof p.pass, "number");
    assert.equal(typeof p.dirty_pages, "number");
  }
  assert.equal(passes.at(-1).dirty_pages, 0);

  const runstates = frames.filter((f) => f.event === "runstate").map(data);
  assert.ok(runstates.length >= 1, "the switchover stops the guest");
  assert.equal(runstates[0].from, "running");
  assert.equal(runstates[0].to, "finish-migrate");

  for (const p of frames.filter((f) => f.event === "progress").map(data)) {
    assert.equal(typeof p.info.status, "string");
  }

  // Nothing left to report: keep-alive comments arrive (keepAliveMs is 50).
  const quiet = await sse.until((f) => f.comment !== undefined);
  assert.equal(quiet.at(-1)?.comment, "keep-alive");

  await sse.cancel();
  await waitFor(() => src.engine.events.size === 0, "the SSE listener to unsubscribe");
  await src.engine.close();
  await dst.engine.close();
});

Deno.test("GET /migrations/events on the destination streams incoming events listening, active, completed", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const src = await sourceApp(transports);
  const sse = await openEvents(dst.app);
  assert.equal((await sse.next())?.event, "hello");

  const uri = "tcp:dst:5001";
  await call(dst.app, "POST", "/migrations/incoming", { uri });
  await call(src.app, "POST", "/migrations", { uri });
  const frames = await sse.until((f) => f.event === "incoming" && FINAL.has(data(f).to));
  await src.engine.migration!.done;
  await dst.engine.incoming!.done;

  const incoming = frames.filter((f) => f.event === "incoming").map(data);
  assert.deepEqual(incoming.map((e) => [e.from, e.to]), [
    ["none", "listening"],
    ["listening", "active"],
    ["active", "completed"],
  ]);
  assert.equal(incoming.at(-1).info.status, "completed");
  assert.ok(incoming.at(-1).info.bytes_received > 0);
  const runstates = frames.filter((f) => f.event === "runstate").map(data);
  assert.equal(runstates[0]?.from, "prelaunch");
  assert.equal(runstates[0]?.to, "inmigrate");

  await sse.cancel();
  await waitFor(() => dst.engine.events.size === 0, "the SSE listener to unsubscribe");
  await src.engine.close();
  await dst.engine.close();
});

Deno.test("GET /migrations/events reports a failed migration's error in its state event", async () => {
  const { app, engine } = testApp();
  const sse = await openEvents(app);
  await sse.next();
  assert.equal((await call(app, "POST", "/migrations", { uri: "tcp:nobody:1" })).status, 202);
  const frames = await sse.until((f) => f.event === "state" && FINAL.has(data(f).to));
  const last = data(frames.at(-1)!);
  assert.equal(last.from, "setup");
  assert.equal(last.to, "failed");
  assert.match(last.error, /refused/);
  await engine.migration!.done;
  await sse.cancel();
  await waitFor(() => engine.events.size === 0, "the SSE listener to unsubscribe");
  await engine.close();
});

Deno.test("GET /migrations/events sends keep-alive comments while idle", async () => {
  const { app, engine } = testApp();
  const sse = await openEvents(app);
  assert.equal((await sse.next())?.event, "hello");
  for (let i = 0; i < 2; i++) {
    const frame = await sse.next();
    assert.deepEqual(frame, { comment: "keep-alive" });
  }
  await sse.cancel();
  await waitFor(() => engine.events.size === 0, "the SSE listener to unsubscribe");
  await engine.close();
});

Deno.test("GET /migrations/events serves several clients; each cancel removes only its listener", async () => {
  const { app, engine } = testApp();
  const a = await openEvents(app);
  const b = await openEvents(app);
  await a.next();
  await b.next();
  assert.equal(engine.events.size, 2);
  await a.cancel();
  await waitFor(() => engine.events.size === 1, "one listener to remain");
  await call(app, "POST", "/vm/start");
  const frames = await b.until((f) => f.event === "runstate");
  const runstate = data(frames.at(-1)!);
  assert.equal(runstate.from, "prelaunch");
  assert.equal(runstate.to, "running");
  await b.cancel();
  await waitFor(() => engine.events.size === 0, "the SSE listeners to unsubscribe");
  await engine.close();
});
