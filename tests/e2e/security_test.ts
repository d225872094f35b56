/**
 * API security through real ferry processes (main.ts): loopback by default, no
 * non-loopback address without a token, the bearer token on every route (SSE
 * included), bounded bodies, exec: behind --allow-exec, and nothing secret in
 * any answer or event.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../bench/ferry_process.ts";
import { parseFlags } from "../../cli.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const TOKEN = "e2e-Token.123";

async function runMain(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Reads an SSE response for `ms` milliseconds (then cancels it) and returns the text. */
async function readEvents(res: Response, ms: number): Promise<string> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const stop = setTimeout(() => reader.cancel(), ms);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
  } catch {
    // cancelled
  } finally {
    clearTimeout(stop);
  }
  return text;
}

Deno.test("security: the API listens on 127.0.0.1 unless told otherwise", () => {
  const c = parseFlags([]);
  assert.equal(c.hostname, "127.0.0.1");
});

Deno.test("security: main.ts refuses a non-loopback address without a token, naming the flag", async () => {
  const r = await runMain(["--listen", "0.0.0.0:0", "--ram", "4M"]);
  assert.equal(r.code, 2);
  assert.match(
    r.stderr,
    /non-loopback address 0\.0\.0\.0 without a token: pass --token or set FERRY_TOKEN/,
  );
  assert.equal(r.stderr.trim().split("\n").length, 1);
  assert.doesNotMatch(r.stdout, /API on/);
});

Deno.test("security: main.ts refuses a token that could never be sent, without echoing it", async () => {
  const r = await runMain(["--ram", "4M", "--token", "bad token!"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Invalid --token/);
  assert.ok(!r.stderr.includes("bad token!"));
});

Deno.test("security: with FERRY_TOKEN, a non-loopback ferry starts and every route group needs the bearer token", async () => {
  await using f = await FerryProcess.start(["--listen", "0.0.0.0:0", "--ram", "8M"], {
    FERRY_TOKEN: TOKEN,
  });
  const url = f.url.replace("0.0.0.0", "127.0.0.1");
  const groups: [string, string][] = [
    ["GET", "/openapi.json"],
    ["POST", "/migrations"],
    ["GET", "/migrations/current"],
    ["DELETE", "/migrations/current"],
    ["GET", "/migrations/incoming"],
    ["POST", "/migrations/incoming"],
    ["GET", "/migrations/capabilities"],
    ["PUT", "/migrations/capabilities"],
    ["GET", "/migrations/parameters"],
    ["PATCH", "/migrations/parameters"],
    ["GET", "/migrations/blockers"],
    ["POST", "/migrations/blockers"],
    ["DELETE", "/migrations/blockers/1"],
    ["GET", "/migrations/events"],
    ["GET", "/vm"],
    ["POST", "/vm/start"],
    ["POST", "/vm/stop"],
    ["GET", "/vm/ram/digest"],
    ["GET", "/vm/ram?length=4096"],
    ["GET", "/nowhere"],
  ];
  for (const [method, path] of groups) {
    const res = await fetch(url + path, { method });
    const text = await res.text();
    assert.equal(res.status, 401, `${method} ${path}: ${text}`);
    assert.equal(JSON.parse(text).error.code, "unauthorized");
    assert.ok(!text.includes(TOKEN));
  }
  // The dashboard page is the exception: it holds no data and asks for the token.
  const page = await fetch(url + "/");
  const html = await page.text();
  assert.equal(page.status, 200);
  assert.ok(!html.includes(TOKEN));
  // With the token, the API and the event stream answer.
  const auth = { authorization: `Bearer ${TOKEN}` };
  const vm = await fetch(url + "/vm", { headers: auth });
  assert.equal(vm.status, 200);
  assert.equal((await vm.json()).run_state, "running");
  const events = await fetch(url + "/migrations/events", { headers: auth });
  assert.equal(events.status, 200);
  await events.body?.cancel();
});

Deno.test("security: no answer or event carries the token, the environment or a stack trace", async () => {
  const SECRET_ENV = "FERRY_E2E_SECRET_VALUE_9f8e7d";
  await using f = await FerryProcess.start(["--ram", "8M", "--workload", "random:rate=1M"], {
    FERRY_TOKEN: TOKEN,
    FERRY_E2E_SECRET: SECRET_ENV,
  });
  const auth = { authorization: `Bearer ${TOKEN}` };
  const events = await fetch(`${f.url}/migrations/events`, { headers: auth });
  assert.equal(events.status, 200);
  const collected = readEvents(events, 3000);
  const bodies: string[] = [];
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(f.url + path, {
      method,
      headers: body === undefined ? auth : { ...auth, "content-type": "application/json" },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    bodies.push(text);
    return { status: res.status, text };
  };
  // Failures of every kind: a refused connection, a bad URI, a bad body, malformed JSON,
  // an exec: URI (disabled), an unknown route.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  assert.equal((await call("POST", "/migrations", { uri: `tcp:127.0.0.1:${port}` })).status, 202);
  for (let i = 0; i < 100; i++) {
    const cur = await call("GET", "/migrations/current");
    if (JSON.parse(cur.text).status === "failed") break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal((await call("POST", "/migrations", { uri: "nonsense" })).status, 400);
  assert.equal((await call("POST", "/migrations", { uri: 42 })).status, 400);
  assert.equal((await call("POST", "/migrations", "{not json")).status, 400);
  const exec = await call("POST", "/migrations", { uri: "exec:cat > /dev/null" });
  assert.equal(exec.status, 403);
  assert.equal(JSON.parse(exec.text).error.code, "exec-disabled");
  assert.equal((await call("GET", "/nowhere")).status, 404);
  await call("GET", "/");
  await call("GET", "/openapi.json");
  const stream = await collected;
  assert.match(stream, /event: state/);
  assert.match(stream, /refused/);
  for (const text of [...bodies, stream]) {
    assert.ok(!text.includes(TOKEN), "no token");
    assert.ok(!text.includes(SECRET_ENV), "no environment");
    assert.ok(
      !/\bat (file|ext|node):|\bat \S+ \(/.test(text),
      `no stack trace: ${text.slice(0, 200)}`,
    );
  }
});

Deno.test("security: a large request body answers 413 and exec: stays disabled, through the real server", async () => {
  await using f = await FerryProcess.start(["--ram", "4M", "--paused"]);
  const exec = await f.api("POST", "/migrations/incoming", { uri: "exec:cat /dev/null" });
  assert.equal(exec.status, 403);
  assert.equal(exec.body.error.code, "exec-disabled");
  assert.match(exec.body.error.message, /--allow-exec/);
  const res = await fetch(`${f.url}/migrations/blockers`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ reason: "x".repeat(1 << 20) }),
  });
  assert.equal(res.status, 413);
  assert.equal((await res.json()).error.code, "payload-too-large");
  assert.deepEqual((await f.api("GET", "/migrations/blockers")).body, []);
});
