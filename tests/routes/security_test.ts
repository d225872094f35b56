import assert from "node:assert/strict";
import { Engine } from "../../engine/engine.ts";
import { createApp, MAX_BODY_BYTES } from "../../routes/app.ts";
import type { VmInspector } from "../../routes/vm.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import type { Channel, Listener, Transports } from "../../transports/transport.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { TestGuest } from "../../testing/test_guest.ts";
import { withTimeout } from "../helpers/wait.ts";

const TOKEN = "s3cret-Token_42";

/** An app over a TestGuest; `digest` lets a test make GET /vm/ram/digest throw. */
function secureApp(opts: { token?: string; digest?: VmInspector["digest"] } = {}) {
  const guest = new TestGuest([["pc.ram", 1 << 20]]);
  const engine = new Engine({ guest, transports: new MemoryTransports() });
  const vm: VmInspector = {
    info: () => ({
      guest: "synthetic",
      run_state: guest.runState,
      ram_size: guest.blocks[0].length,
      page_size: PAGE_SIZE,
      workload: "idle",
      throttle: 0,
      ops: 0,
    }),
    digest: opts.digest ?? (() => Promise.resolve({ blocks: [], sha256: "" })),
  };
  const app = createApp({
    engine,
    vm,
    keepAliveMs: 50,
    dashboard: "<!doctype html><title>ferry</title>",
    ...(opts.token ? { token: opts.token } : {}),
  });
  return { app, engine, guest };
}

/** Every route the app serves as [method, path] with sample path parameters. */
function routes(app: ReturnType<typeof secureApp>["app"]): [string, string][] {
  const out = new Map<string, [string, string]>();
  for (const r of app.routes) {
    if (r.method === "ALL") continue;
    const path = r.path.replace(/:(\w+)/g, "1");
    out.set(`${r.method} ${path}`, [r.method, path]);
  }
  return [...out.values()];
}

async function drain(res: Response): Promise<string> {
  return await res.text();
}

// ---- request body limit --------------------------------------------------------------

Deno.test("a request body over 64 KiB answers 413 with the JSON error shape, and nothing happens", async () => {
  const { app, engine } = secureApp();
  try {
    const big = JSON.stringify({ uri: "tcp:127.0.0.1:1", pad: "x".repeat(MAX_BODY_BYTES) });
    for (const path of ["/migrations", "/migrations/incoming", "/migrations/blockers"]) {
      const res = await app.request(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: big,
      });
      assert.equal(res.status, 413, path);
      assert.deepEqual(await res.json(), {
        error: {
          code: "payload-too-large",
          message: `Request body larger than ${MAX_BODY_BYTES} bytes`,
        },
      });
    }
    assert.equal(engine.current().status, "none");
    assert.equal(engine.blockers.length, 0);
    assert.equal(engine.incomingInfo().status, "none");
  } finally {
    await engine.close();
  }
});

Deno.test("a chunked body (no content-length) is cut off at 64 KiB too", async () => {
  const { app, engine } = secureApp();
  try {
    const chunk = new TextEncoder().encode("x".repeat(16 << 10));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(ctrl) {
        // An endless body: the limit must stop reading it.
        sent += chunk.length;
        ctrl.enqueue(chunk);
      },
    });
    const res = await withTimeout(
      Promise.resolve(app.request("/migrations/parameters", {
        method: "PATCH",
        headers: { "content-type": "application/json", "transfer-encoding": "chunked" },
        body,
        // @ts-ignore: Request needs duplex for a stream body
        duplex: "half",
      })),
      10_000,
      "the answer to an endless body",
    );
    assert.equal(res.status, 413);
    assert.equal((await res.json()).error.code, "payload-too-large");
    assert.ok(sent < 1 << 20, `stopped reading after ${sent} bytes`);
  } finally {
    await engine.close();
  }
});

Deno.test("a body just under the limit is still validated normally (400, not 413)", async () => {
  const { app, engine } = secureApp();
  try {
    const res = await app.request("/migrations/blockers", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ reason: "r".repeat(MAX_BODY_BYTES - 100) }),
    });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.field, "reason");
  } finally {
    await engine.close();
  }
});

// ---- bearer token --------------------------------------------------------------------

Deno.test("with a token, every route but the dashboard page answers 401 JSON without it — SSE included", async () => {
  const { app, engine } = secureApp({ token: TOKEN });
  try {
    const all = routes(app);
    assert.ok(all.length >= 18, `found ${all.length} routes`);
    for (const [method, path] of [...all, ["GET", "/no/such/route"] as [string, string]]) {
      if (method === "GET" && path === "/") continue;
      const res = await app.request(path, { method });
      const text = await drain(res);
      assert.equal(res.status, 401, `${method} ${path}: ${text}`);
      assert.deepEqual(JSON.parse(text), {
        error: { code: "unauthorized", message: "This ferry needs an Authorization: Bearer token" },
      });
      assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
    }
    const events = await app.request("/migrations/events");
    assert.equal(events.status, 401);
    assert.notEqual(events.headers.get("content-type"), "text/event-stream");
    await drain(events);
  } finally {
    await engine.close();
  }
});

Deno.test("with a token, the dashboard page is served without it and holds no data or token", async () => {
  const { app, engine } = secureApp({ token: TOKEN });
  try {
    const res = await app.request("/");
    const html = await res.text();
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/html/);
    assert.ok(!html.includes(TOKEN));
  } finally {
    await engine.close();
  }
});

Deno.test("a wrong token answers 401, a malformed header 400, and neither echoes any token", async () => {
  const { app, engine } = secureApp({ token: TOKEN });
  try {
    // The malformed header first: a wrong token locks this address out for a while.
    const bad = await app.request("/vm", { headers: { authorization: "Basic Zm9vOmJhcg==" } });
    const badText = await bad.text();
    assert.equal(bad.status, 400);
    assert.equal(JSON.parse(badText).error.code, "bad-request");
    const wrong = await app.request("/vm", { headers: { authorization: "Bearer not-the-token" } });
    const wrongText = await wrong.text();
    assert.equal(wrong.status, 401);
    assert.equal(JSON.parse(wrongText).error.code, "unauthorized");
    for (const text of [wrongText, badText]) {
      assert.ok(!text.includes(TOKEN) && !text.includes("not-the-token") && !text.includes("Zm9v"));
    }
  } finally {
    await engine.close();
  }
});

Deno.test("with the token every route group answers normally", async () => {
  const { app, engine } = secureApp({ token: TOKEN });
  const auth = { authorization: `Bearer ${TOKEN}` };
  try {
    for (
      const path of [
        "/vm",
        "/vm/ram/digest",
        "/migrations/current",
        "/migrations/incoming",
        "/migrations/capabilities",
        "/migrations/parameters",
        "/migrations/blockers",
        "/openapi.json",
      ]
    ) {
      const res = await app.request(path, { headers: auth });
      await drain(res);
      assert.equal(res.status, 200, path);
    }
    const patch = await app.request("/migrations/parameters", {
      method: "PATCH",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ progress_timeout: 5000 }),
    });
    assert.equal(patch.status, 200);
    assert.equal((await patch.json()).progress_timeout, 5000);
    const ctrl = new AbortController();
    const events = await app.request("/migrations/events", { headers: auth, signal: ctrl.signal });
    assert.equal(events.status, 200);
    assert.match(events.headers.get("content-type") ?? "", /text\/event-stream/);
    await events.body?.cancel();
    ctrl.abort();
  } finally {
    await engine.close();
  }
});

// ---- no leaks in errors --------------------------------------------------------------

Deno.test("an unexpected error answers 500 {code: internal} without its message, stack or environment", async () => {
  const secret = `FERRY_TOKEN=${TOKEN} HOME=/root`;
  const { app, engine } = secureApp({
    digest: () => Promise.reject(new Error(`boom: ${secret}`)),
  });
  const original = console.error;
  const logged: unknown[] = [];
  console.error = (...args: unknown[]) => logged.push(args);
  try {
    const res = await app.request("/vm/ram/digest");
    const text = await res.text();
    assert.equal(res.status, 500);
    assert.deepEqual(JSON.parse(text), { error: { code: "internal", message: "Internal error" } });
    assert.ok(!text.includes(TOKEN) && !text.includes("boom") && !/\bat \S+:\d+/.test(text));
    assert.equal(logged.length, 1, "the details go to the server's log only");
  } finally {
    console.error = original;
    await engine.close();
  }
});

/** Transports whose connect fails with an error carrying a long stack. */
class ThrowingTransports implements Transports {
  validate(): void {}
  connect(): Promise<Channel> {
    return Promise.reject(new Error("connect exploded"));
  }
  listen(): Promise<Listener> {
    return Promise.reject(new Error("no"));
  }
}

Deno.test("migration failures reach the API and the event stream as one line, never a stack", async () => {
  const guest = new TestGuest([["pc.ram", 1 << 20]]);
  guest.start();
  const engine = new Engine({ guest, transports: new ThrowingTransports() });
  const errors: string[] = [];
  engine.events.subscribe((e) => {
    if (e.type === "state" && e.error) errors.push(e.error);
  });
  try {
    engine.migrate("tcp:127.0.0.1:1");
    await engine.migration!.done;
    const info = engine.current();
    assert.equal(info.status, "failed");
    assert.equal(info.error_desc, "connect exploded");
    assert.deepEqual(errors, ["connect exploded"]);
    for (const text of [info.error_desc!, ...errors]) {
      assert.ok(!text.includes("\n") && !/\bat \S+:\d+/.test(text), text);
    }
  } finally {
    await engine.close();
  }
});
