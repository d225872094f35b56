/**
 * API security through real ferry processes (main.ts): loopback by default, a
 * token on every request (generated into a private file when none is given), the
 * host check against DNS rebinding, the origin check against CSRF, bounded
 * bodies, exec: behind --allow-exec, and nothing secret in any answer or event.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { parseFlags } from "../../cli.ts";
import { rawRequest } from "../helpers/raw_http.ts";
import { withTimeout } from "../helpers/wait.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const TOKEN = "e2e-Token.1234567890";

/**
 * Runs main.ts to its exit. A ferry that starts instead of refusing its flags is
 * killed after a guard time, so such a regression fails the test instead of hanging it.
 */
async function runMain(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--listen", "127.0.0.1:0", ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const guard = setTimeout(() => child.kill("SIGKILL"), 30_000);
  try {
    const out = await child.output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    clearTimeout(guard);
  }
}

/**
 * A ferry started like the README's `deno task start` (no token given) on a free
 * loopback port, with its own XDG_RUNTIME_DIR. `token` is what its token file
 * holds once the API URL is printed (undefined if it wrote none); `stop()` ends it
 * with SIGTERM.
 */
async function defaultFerry(args: string[] = []) {
  const runtime = Deno.makeTempDirSync({ prefix: "ferry-xdg-" });
  Deno.chmodSync(runtime, 0o700);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--listen", "127.0.0.1:0", "--ram", "8M", ...args],
    env: { XDG_RUNTIME_DIR: runtime },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines: string[] = [];
  let ended = false;
  let notify = () => {};
  const pump = (async () => {
    let partial = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      partial += chunk;
      let nl;
      while ((nl = partial.indexOf("\n")) >= 0) {
        lines.push(partial.slice(0, nl));
        partial = partial.slice(nl + 1);
      }
      notify();
    }
    ended = true;
    notify();
  })();
  /** The first line matching `re`, once printed (a guard fails the test if it never is). */
  const line = (re: RegExp): Promise<string> =>
    withTimeout(
      (async () => {
        for (;;) {
          const found = lines.find((l) => re.test(l));
          if (found !== undefined) return found;
          if (ended) {
            throw new Error(
              `ferry ended without ${re}: ${lines.join("\n")} ${await stderr}`,
            );
          }
          await new Promise<void>((r) => notify = r);
        }
      })(),
      30_000,
      `a line matching ${re}`,
    );
  const url = /API on (http:\/\/\S+)/.exec(await line(/API on http/))![1];
  const port = Number(new URL(url).port);
  const tokenFile = `${runtime}/ferry/api-${port}.token`;
  let token: string | undefined;
  try {
    token = Deno.readTextFileSync(tokenFile).trim();
  } catch {
    token = undefined;
  }
  const ends = async () => {
    const status = await child.status;
    await pump;
    await stderr;
    return status;
  };
  return {
    url,
    port,
    runtime,
    tokenFile,
    token,
    line,
    auth: (): Record<string, string> => token ? { authorization: `Bearer ${token}` } : {},
    stop(): Promise<Deno.CommandStatus> {
      child.kill("SIGTERM");
      return ends();
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await ends();
      Deno.removeSync(runtime, { recursive: true });
    },
  };
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

Deno.test("security: without --token, ferry generates one into a private file and every request but GET / needs it", async () => {
  await using f = await defaultFerry();
  assert.ok(f.token, "the token file exists once the API URL is printed");
  assert.match(f.token!, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(Deno.statSync(f.tokenFile).mode! & 0o777, 0o600);
  assert.equal(Deno.statSync(`${f.runtime}/ferry`).mode! & 0o777, 0o700);
  assert.equal(
    await f.line(/API token in/),
    `ferry: API token in ${f.tokenFile} (readable by you only)`,
  );
  assert.equal(
    await f.line(/dashboard/),
    `ferry: dashboard http://127.0.0.1:${f.port}/#token=${f.token}`,
  );
  const denied = await fetch(`${f.url}/vm`);
  assert.equal(denied.status, 401);
  assert.equal((await denied.json()).error.code, "unauthorized");
  const page = await fetch(`${f.url}/`);
  assert.equal(page.status, 200);
  assert.ok(!(await page.text()).includes(f.token!), "the page does not carry the token");
  const ok = await fetch(`${f.url}/vm`, { headers: f.auth() });
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).run_state, "running");
  // A clean shutdown removes the file.
  assert.equal((await f.stop()).code, 0);
  assert.throws(() => Deno.statSync(f.tokenFile), Deno.errors.NotFound);
});

Deno.test("security: another local user without the token can neither stop the guest, read its RAM nor overwrite files with file:", async () => {
  await using f = await defaultFerry();
  const victim = `${f.runtime}/authorized_keys`;
  Deno.writeTextFileSync(victim, "ssh-ed25519 AAAA owner@host\n");
  const stop = await fetch(`${f.url}/vm/stop`, { method: "POST" });
  await stop.body?.cancel();
  assert.equal(stop.status, 401, "POST /vm/stop");
  const ram = await fetch(`${f.url}/vm/ram?offset=0&length=64`);
  await ram.body?.cancel();
  assert.equal(ram.status, 401, "GET /vm/ram");
  const save = await fetch(`${f.url}/migrations`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ uri: `file:${victim}` }),
  });
  await save.body?.cancel();
  assert.equal(save.status, 401, "POST /migrations file:");
  const events = await fetch(`${f.url}/migrations/events`);
  await events.body?.cancel();
  assert.equal(events.status, 401, "GET /migrations/events");
  // Nothing happened.
  assert.equal(Deno.readTextFileSync(victim), "ssh-ed25519 AAAA owner@host\n");
  const vm = await fetch(`${f.url}/vm`, { headers: f.auth() });
  assert.equal((await vm.json()).run_state, "running");
  const current = await fetch(`${f.url}/migrations/current`, { headers: f.auth() });
  assert.equal((await current.json()).status, "none");
});

Deno.test("security: DNS rebinding — a request for a foreign host name gets 403 host-not-allowed, token or not", async () => {
  await using f = await defaultFerry();
  for (const headers of [{}, f.auth()]) {
    const res = await rawRequest(`${f.url}/vm/ram?offset=0&length=64`, {
      headers: { ...headers, host: `rebind.attacker.example:${f.port}` },
    });
    assert.equal(res.status, 403, res.body);
    const body = JSON.parse(res.body);
    assert.equal(body.error.code, "host-not-allowed");
    assert.match(body.error.message, /rebind\.attacker\.example.*--allowed-host/);
  }
  // The same request by a loopback name answers.
  const own = await rawRequest(`${f.url}/vm/ram?offset=0&length=64`, {
    headers: { ...f.auth(), host: `localhost:${f.port}` },
  });
  assert.equal(own.status, 200);
});

Deno.test("security: --allowed-host adds a name the API answers to", async () => {
  await using f = await defaultFerry(["--allowed-host", "ferry.test"]);
  const named = await rawRequest(`${f.url}/vm`, {
    headers: { ...f.auth(), host: `ferry.test:${f.port}` },
  });
  assert.equal(named.status, 200, named.body);
  const other = await rawRequest(`${f.url}/vm`, {
    headers: { ...f.auth(), host: `other.test:${f.port}` },
  });
  assert.equal(other.status, 403);
});

Deno.test("security: CSRF — a cross-site text/plain POST /vm/stop is refused 403 cross-origin, token or not; the guest runs on", async () => {
  await using f = await defaultFerry();
  for (const headers of [{}, f.auth()]) {
    const res = await fetch(`${f.url}/vm/stop`, {
      method: "POST",
      headers: { ...headers, "content-type": "text/plain", origin: "http://evil.example" },
      body: "",
    });
    assert.equal(res.status, 403);
    assert.equal((await res.json()).error.code, "cross-origin");
  }
  const vm = await fetch(`${f.url}/vm`, { headers: f.auth() });
  assert.equal((await vm.json()).run_state, "running");
  // curl -X POST with the token, no body, still works.
  const curl = await fetch(`${f.url}/vm/stop`, { method: "POST", headers: f.auth() });
  assert.equal(curl.status, 200);
  assert.equal((await curl.json()).run_state, "paused");
});

Deno.test("security: main.ts refuses a token shorter than 16 characters, without echoing it", async () => {
  for (
    const [args, env] of [[["--token", "a"], {}], [[], { FERRY_TOKEN: "sh0rt-t0ken" }]] as const
  ) {
    const r = await runMain(["--ram", "4M", ...args], env);
    assert.equal(r.code, 2, r.stdout);
    assert.match(r.stderr, /Invalid --token\/FERRY_TOKEN: a token needs at least 16 characters/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
    assert.doesNotMatch(r.stdout, /API on/);
    assert.ok(!r.stderr.includes("sh0rt-t0ken"));
  }
});

Deno.test("security: a non-loopback address starts with a generated token; every request needs it", async () => {
  await using f = await defaultFerry(["--listen", "0.0.0.0:0"]);
  assert.ok(f.token);
  assert.equal(
    await f.line(/dashboard/),
    `ferry: dashboard http://127.0.0.1:${f.port}/#token=${f.token}`,
  );
  const url = f.url.replace("0.0.0.0", "127.0.0.1");
  const denied = await fetch(`${url}/vm`);
  await denied.body?.cancel();
  assert.equal(denied.status, 401);
  const ok = await fetch(`${url}/vm`, { headers: f.auth() });
  assert.equal(ok.status, 200);
  await ok.body?.cancel();
});

Deno.test("security: main.ts refuses a token that could never be sent, without echoing it", async () => {
  const r = await runMain(["--ram", "4M", "--token", "bad token! but long enough"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Invalid --token/);
  assert.ok(!r.stderr.includes("bad token!"));
  assert.equal(r.code, 2);
});

Deno.test("security: with FERRY_TOKEN, a non-loopback ferry starts and every route group needs the bearer token", async () => {
  await using f = await FerryProcess.start(["--listen", "0.0.0.0:0", "--ram", "8M"], {
    FERRY_TOKEN: TOKEN,
  });
  assert.equal(f.token, TOKEN);
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
  const res = await f.fetch("/migrations/blockers", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ reason: "x".repeat(1 << 20) }),
  });
  assert.equal(res.status, 413);
  assert.equal((await res.json()).error.code, "payload-too-large");
  assert.deepEqual((await f.api("GET", "/migrations/blockers")).body, []);
});
