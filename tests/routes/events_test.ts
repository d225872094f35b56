import assert from "node:assert/strict";
import { MemoryTransports } from "../../transports/memory.ts";
import { PROGRESS_INTERVAL_MS } from "../../routes/events.ts";
import { call, testApp } from "../helpers/app.ts";
import { FakeClock } from "../helpers/fake_clock.ts";
import { tick, waitUntil } from "../helpers/wait.ts";
import { sourceApp, type SseFrame, SseReader } from "./_helpers.ts";

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
  await waitUntil(() => engine.events.size === 0, "the SSE listener to unsubscribe");
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
  await waitUntil(() => src.engine.events.size === 0, "the SSE listener to unsubscribe");
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
  await waitUntil(() => dst.engine.events.size === 0, "the SSE listener to unsubscribe");
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
  await waitUntil(() => engine.events.size === 0, "the SSE listener to unsubscribe");
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
  await waitUntil(() => engine.events.size === 0, "the SSE listener to unsubscribe");
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
  await waitUntil(() => engine.events.size === 1, "one listener to remain");
  await call(app, "POST", "/vm/start");
  const frames = await b.until((f) => f.event === "runstate");
  const runstate = data(frames.at(-1)!);
  assert.equal(runstate.from, "prelaunch");
  assert.equal(runstate.to, "running");
  await b.cancel();
  await waitUntil(() => engine.events.size === 0, "the SSE listeners to unsubscribe");
  await engine.close();
});

// ---------------------------------------------------------------------------
// Replay (Last-Event-ID), rate limiting, slow clients, many clients.

/** Opens the event stream with a Last-Event-ID header. */
async function resume(
  app: ReturnType<typeof testApp>["app"],
  lastEventId: string,
): Promise<SseReader> {
  const res = await app.request("/migrations/events", {
    headers: { "last-event-id": lastEventId },
  });
  assert.equal(res.status, 200);
  assert.ok(res.body);
  return new SseReader(res.body);
}

/** Emits a synthetic runstate event (the notifier is the engine's public event hub). */
function emitRunstate(engine: ReturnType<typeof testApp>["engine"]) {
  return engine.events.emit({ type: "runstate", from: "paused", to: "paused", time: Date.now() });
}

function emitProgress(engine: ReturnType<typeof testApp>["engine"], transferred: number) {
  return engine.events.emit({
    type: "progress",
    info: { status: "active", ram: { transferred } as never },
    time: Date.now(),
  });
}

async function closeAll(engine: ReturnType<typeof testApp>["engine"], ...readers: SseReader[]) {
  for (const r of readers) await r.cancel();
  await waitUntil(() => engine.events.size === 0, "the SSE listeners to unsubscribe");
  await engine.close();
}

Deno.test("SSE constants: keep-alive at most 15 s, progress at most 10/s, replay buffer 1024", async () => {
  const { KEEPALIVE_MS, PROGRESS_INTERVAL_MS, MAX_QUEUED_EVENTS } = await import(
    "../../routes/events.ts"
  );
  assert.ok(KEEPALIVE_MS <= 15_000);
  assert.ok(PROGRESS_INTERVAL_MS >= 100);
  assert.equal(MAX_QUEUED_EVENTS, 1024);
  const { engine } = testApp();
  assert.equal(engine.events.historySize, 1024);
  await engine.close();
});

Deno.test("hello carries the id of the last event it covers and a retry hint", async () => {
  const { app, engine } = testApp();
  emitRunstate(engine);
  emitRunstate(engine);
  const res = await app.request("/migrations/events");
  const reader = res.body!.getReader();
  const text = new TextDecoder().decode((await reader.read()).value);
  assert.match(text, /^event: hello\ndata: .*\nid: 2\nretry: 1000\n\n/);
  await reader.cancel();
  await waitUntil(() => engine.events.size === 0, "the SSE listener to unsubscribe");
  await engine.close();
});

Deno.test("Last-Event-ID: a reconnecting client gets exactly the events it missed, without hello", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const src = await sourceApp(transports);
  const all: { id: number; type: string }[] = [];
  const off = src.engine.events.subscribe((e) => all.push({ id: e.id, type: e.type }));
  const first = await openEvents(src.app);
  const hello = await first.next();
  assert.equal(hello?.event, "hello");
  const helloId = Number(hello?.id);

  const uri = "tcp:dst:5002";
  await call(dst.app, "POST", "/migrations/incoming", { uri });
  await call(src.app, "POST", "/migrations", { uri });
  // The first client sees the start, then "loses its connection".
  const seen = await first.until((f) => f.event === "state" && data(f).to === "setup");
  const lastSeen = seen.at(-1)!.id!;
  await first.cancel();
  await src.engine.migration!.done;
  await dst.engine.incoming!.done;
  off();

  const again = await resume(src.app, lastSeen);
  const frames = await again.until((f) => f.event === "state" && FINAL.has(data(f).to));
  assert.ok(!frames.some((f) => f.event === "hello"), "no hello on a resumed stream");
  const missed = all.filter((e) => e.id > Number(lastSeen));
  // Everything but superseded progress events is replayed, in order.
  const expected = missed.filter((e, i) =>
    e.type !== "progress" || !missed.slice(i + 1).some((m) => m.type === "progress")
  );
  assert.deepEqual(frames.map((f) => [Number(f.id), f.event]), expected.map((e) => [e.id, e.type]));
  assert.ok(Number(lastSeen) > helloId);
  await closeAll(src.engine, again);
  await dst.engine.close();
});

Deno.test("Last-Event-ID older than the replay buffer answers a reset snapshot", async () => {
  const { app, engine } = testApp();
  for (let i = 0; i < 1100; i++) emitRunstate(engine);
  const sse = await resume(app, "10");
  const reset = await sse.next();
  assert.equal(reset?.event, "reset");
  assert.equal(reset?.id, "1100", "the snapshot covers every event so far");
  const body = data(reset!);
  assert.equal(body.reason, "events-expired");
  assert.deepEqual(body.migration, { status: "none" });
  assert.equal(body.incoming.status, "none");
  // Then the stream goes on normally.
  emitRunstate(engine);
  const next = await sse.next();
  assert.equal(next?.event, "runstate");
  assert.equal(next?.id, "1101");

  // Still inside the buffer: a replay, no reset.
  const inside = await resume(app, "1000");
  const replayed = await inside.until((f) => f.id === "1101");
  assert.equal(replayed.length, 101);
  assert.equal(replayed[0].id, "1001");
  await closeAll(engine, sse, inside);
});

Deno.test("Last-Event-ID from the future (a restarted ferry) answers reset; garbage answers hello", async () => {
  const { app, engine } = testApp();
  emitRunstate(engine);
  const future = await resume(app, "999");
  const reset = await future.next();
  assert.equal(reset?.event, "reset");
  assert.equal(reset?.id, "1");
  const garbage = await resume(app, "not-a-number");
  assert.equal((await garbage.next())?.event, "hello");
  const caughtUp = await resume(app, "1");
  emitRunstate(engine);
  assert.equal((await caughtUp.next())?.id, "2", "caught up: nothing replayed, no hello");
  await closeAll(engine, future, garbage, caughtUp);
});

Deno.test("progress events reach a client at most one per PROGRESS_INTERVAL_MS, coalesced to the newest, in id order", async () => {
  const clock = new FakeClock();
  const { app, engine } = testApp({ clock });
  const sse = await openEvents(app);
  await sse.next();
  const received: { at: number; id: number; event: string; transferred?: number }[] = [];
  const reading = (async () => {
    for (;;) {
      const f = await sse.next();
      if (!f || f.event === "state") return;
      if (!f.event) continue;
      const d = data(f);
      received.push({
        at: clock.now(),
        id: Number(f.id),
        event: f.event,
        transferred: d.info?.ram?.transferred,
      });
    }
  })();
  // 300 progress events in 1.5 s of the engine's clock (200/s), a runstate every 50.
  // Each turn lets the stream write what is due and the reader read it, so a
  // frame is read at the clock time it was sent.
  for (let n = 0; n < 300; clock.advance(25)) {
    for (let i = 0; i < 5; i++, n++) {
      emitProgress(engine, n);
      if (n % 50 === 49) emitRunstate(engine);
    }
    await tick();
  }
  await tick();
  clock.advance(PROGRESS_INTERVAL_MS);
  await tick();
  engine.events.emit({ type: "state", from: "active", to: "completed", time: clock.wall() });
  await reading;

  const progress = received.filter((r) => r.event === "progress");
  // One as soon as each interval allows it (events kept coming until 1475 ms):
  // never closer together, never held back longer.
  assert.deepEqual(
    progress.map((p) => p.at),
    Array.from({ length: 1500 / PROGRESS_INTERVAL_MS + 1 }, (_, i) => i * PROGRESS_INTERVAL_MS),
  );
  // Each carries the newest progress emitted by then (5 per 25 ms).
  for (const p of progress.slice(0, -1)) assert.equal(p.transferred, (p.at / 25) * 5 + 4);
  assert.equal(progress.at(-1)!.transferred, 299, "the newest progress is delivered");
  assert.equal(received.filter((r) => r.event === "runstate").length, 6, "nothing else dropped");
  for (let i = 1; i < received.length; i++) assert.ok(received[i].id > received[i - 1].id);
  await closeAll(engine, sse);
});

Deno.test("a stalled client gets a bounded queue: after 5000 events it reads hello, reset, then the newest", async () => {
  const { app, engine } = testApp();
  const res = await app.request("/migrations/events");
  // Nobody reads: the first write (hello) blocks, events pile up in the queue.
  await tick();
  for (let i = 0; i < 5000; i++) emitRunstate(engine);
  const sse = new SseReader(res.body!);
  const frames = await sse.until((f) => f.comment !== undefined);
  const events = frames.filter((f) => f.event);
  assert.equal(events[0].event, "hello");
  const resetAt = events.findIndex((f) => f.event === "reset");
  assert.ok(resetAt > 0, "a reset replaced the overflowing queue");
  assert.equal(data(events[resetAt]).reason, "client-behind");
  assert.ok(events.length <= 1024 + 2, `${events.length} frames: the queue was bounded`);
  assert.equal(events.at(-1)!.id, "5000");
  await closeAll(engine, sse);
});

Deno.test("a client that never reads does not slow a migration down", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports, ram: 16 << 20 });
  // The source runs on a virtual clock: only the rate limiter moves it, so a
  // migration takes the same clock time however busy the machine is.
  const clock = new FakeClock();
  const src = await sourceApp(transports, 16 << 20, clock);
  await call(src.app, "PATCH", "/migrations/parameters", { max_bandwidth: 64 << 20 });
  // Baseline: the same migration with nobody listening.
  const run = async (uri: string) => {
    await call(dst.app, "POST", "/migrations/incoming", { uri });
    await call(src.app, "POST", "/migrations", { uri });
    await src.engine.migration!.done;
    await dst.engine.incoming!.done;
    const info = src.engine.current();
    assert.equal(info.status, "completed");
    await call(dst.app, "POST", "/vm/stop");
    return info;
  };
  const alone = await run("tcp:dst:6000");
  const stalled = await src.app.request("/migrations/events"); // never read
  const stalled2 = await src.app.request("/migrations/events", {
    headers: { "last-event-id": "1" },
  });
  // And one over real HTTP whose socket is never read.
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, src.app.fetch);
  const socket = await RawSseClient.open(server.addr.port, "/migrations/events");
  await waitUntil(() => src.engine.events.size === 3, "three listeners");
  await call(src.app, "POST", "/vm/stop");
  const watched = await run("tcp:dst:6001");
  // Not one clock tick more, and the very same stream: nothing waited for a listener.
  assert.ok(alone.total_time! > 0, "the rate limit made the migration take clock time");
  assert.equal(watched.total_time, alone.total_time);
  assert.equal(watched.ram!.transferred, alone.ram!.transferred);
  assert.equal(watched.ram!.dirty_sync_count, alone.ram!.dirty_sync_count);
  await stalled.body!.cancel();
  await stalled2.body!.cancel();
  socket.conn.close();
  await waitUntil(() => src.engine.events.size === 0, "the stalled listeners to unsubscribe");
  await server.shutdown();
  await src.engine.close();
  await dst.engine.close();
});

/** A raw HTTP/1.1 client on a TCP socket: a disconnect is a real close of the socket. */
class RawSseClient {
  #text = "";
  readonly #decoder = new TextDecoder();
  private constructor(readonly conn: Deno.TcpConn) {}

  static async open(port: number, path: string): Promise<RawSseClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(
      new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`),
    );
    return new RawSseClient(conn);
  }

  /** Reads until the text received so far includes `needle`. */
  async waitFor(needle: string): Promise<string> {
    const buf = new Uint8Array(16384);
    while (!this.#text.includes(needle)) {
      const n = await this.conn.read(buf);
      assert.ok(n !== null, `connection closed before ${needle}`);
      this.#text += this.#decoder.decode(buf.subarray(0, n), { stream: true });
    }
    return this.#text;
  }
}

Deno.test("100 concurrent subscribers over real HTTP all follow a migration; disconnects free everything", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const src = await sourceApp(transports);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, src.app.fetch);
  const { port } = server.addr;
  // Half are fetch clients, half raw sockets that simply close.
  const readers: SseReader[] = [];
  const sockets: RawSseClient[] = [];
  for (let i = 0; i < 50; i++) {
    const res = await fetch(`http://127.0.0.1:${port}/migrations/events`);
    assert.equal(res.status, 200);
    readers.push(new SseReader(res.body!));
    sockets.push(await RawSseClient.open(port, "/migrations/events"));
  }
  for (const r of readers) assert.equal((await r.next())?.event, "hello");
  for (const s of sockets) assert.match(await s.waitFor("event: hello"), /^HTTP\/1\.1 200/);
  assert.equal(src.engine.events.size, 100);

  const uri = "tcp:dst:5003";
  await call(dst.app, "POST", "/migrations/incoming", { uri });
  await call(src.app, "POST", "/migrations", { uri });
  const ends = await Promise.all(
    readers.map((r) => r.until((f) => f.event === "state" && FINAL.has(data(f).to))),
  );
  for (const frames of ends) assert.equal(data(frames.at(-1)!).to, "completed");
  for (const s of sockets) await s.waitFor('"to":"completed"');
  await src.engine.migration!.done;
  await dst.engine.incoming!.done;

  for (const s of sockets) s.conn.close();
  await waitUntil(() => src.engine.events.size === 50, "closed sockets to unsubscribe");
  for (const r of readers) await r.cancel();
  await waitUntil(() => src.engine.events.size === 0, "cancelled bodies to unsubscribe");
  await server.shutdown();
  await src.engine.close();
  await dst.engine.close();
});
