import assert from "node:assert/strict";
import { sameOrigin } from "../../routes/origin_check.ts";
import { testApp } from "../helpers/app.ts";

Deno.test("sameOrigin() compares host and port with the Host header, http or https", () => {
  assert.ok(sameOrigin("http://127.0.0.1:8080", "127.0.0.1:8080"));
  assert.ok(sameOrigin("http://localhost:8080", "LOCALHOST:8080"));
  assert.ok(sameOrigin("http://[::1]:8080", "[::1]:8080"));
  assert.ok(sameOrigin("http://ferry.lan", "ferry.lan"));
  assert.ok(sameOrigin("https://ferry.lan", "ferry.lan"), "through a TLS proxy");
  assert.ok(!sameOrigin("http://127.0.0.1:8081", "127.0.0.1:8080"), "another port");
  assert.ok(!sameOrigin("http://localhost:8080", "127.0.0.1:8080"), "another name");
  assert.ok(!sameOrigin("http://evil.example", "127.0.0.1:8080"));
  assert.ok(!sameOrigin("null", "127.0.0.1:8080"));
  assert.ok(!sameOrigin("file://", "127.0.0.1:8080"));
  assert.ok(!sameOrigin("http://127.0.0.1:8080/path", "127.0.0.1:8080"), "not an origin");
  assert.ok(!sameOrigin("ws://127.0.0.1:8080", "127.0.0.1:8080"));
});

Deno.test("CSRF: a cross-site POST /vm/stop (text/plain, foreign Origin) is refused 403 cross-origin; the guest keeps running", async () => {
  const { app, engine, guest } = testApp();
  guest.start();
  try {
    const res = await app.request("/vm/stop", {
      method: "POST",
      headers: {
        host: "127.0.0.1:8080",
        origin: "http://evil.example",
        "content-type": "text/plain",
      },
      body: "",
    });
    assert.equal(res.status, 403);
    const body = await res.json();
    assert.equal(body.error.code, "cross-origin");
    assert.match(body.error.message, /"http:\/\/evil\.example"/);
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
  }
});

Deno.test("every state-changing method is refused for a foreign or null Origin", async () => {
  const { app, engine, guest } = testApp();
  guest.start();
  try {
    const cases: [string, string, unknown][] = [
      ["POST", "/vm/stop", undefined],
      ["POST", "/migrations", { uri: "file:/tmp/ferry-csrf-never-written" }],
      ["PUT", "/migrations/capabilities", { xbzrle: false }],
      ["PATCH", "/migrations/parameters", { downtime_limit: 1 }],
      ["DELETE", "/migrations/current", undefined],
      ["POST", "/migrations/blockers", { reason: "csrf" }],
    ];
    for (const origin of ["http://evil.example", "null", "http://127.0.0.1:9999"]) {
      for (const [method, path, json] of cases) {
        const res = await app.request(path, {
          method,
          headers: {
            host: "127.0.0.1:8080",
            origin,
            ...(json === undefined ? {} : { "content-type": "application/json" }),
          },
          body: json === undefined ? undefined : JSON.stringify(json),
        });
        assert.equal(res.status, 403, `${origin} ${method} ${path}`);
        assert.equal((await res.json()).error.code, "cross-origin");
      }
    }
    assert.equal(guest.runState, "running");
    assert.equal(engine.current().status, "none");
    assert.equal(engine.blockers.length, 0);
  } finally {
    await engine.close();
  }
});

Deno.test("Sec-Fetch-Site cross-site or same-site is refused even without an Origin", async () => {
  const { app, engine, guest } = testApp();
  guest.start();
  try {
    for (const site of ["cross-site", "same-site"]) {
      const res = await app.request("/vm/stop", {
        method: "POST",
        headers: { "sec-fetch-site": site },
      });
      assert.equal(res.status, 403, site);
      const body = await res.json();
      assert.equal(body.error.code, "cross-origin");
      assert.match(body.error.message, new RegExp(`Sec-Fetch-Site: ${site}`));
    }
    assert.equal(guest.runState, "running");
  } finally {
    await engine.close();
  }
});

Deno.test("ferry's own page (same origin) and clients without Origin (curl) may change state", async () => {
  const { app, engine, guest } = testApp();
  guest.start();
  try {
    const own = await app.request("/vm/stop", {
      method: "POST",
      headers: {
        host: "127.0.0.1:8080",
        origin: "http://127.0.0.1:8080",
        "sec-fetch-site": "same-origin",
      },
    });
    assert.equal(own.status, 200);
    assert.equal((await own.json()).run_state, "paused");
    const curl = await app.request("/vm/start", { method: "POST" });
    assert.equal(curl.status, 200);
    assert.equal((await curl.json()).run_state, "running");
    const typed = await app.request("/vm/stop", {
      method: "POST",
      headers: { "sec-fetch-site": "none" }, // typed in the address bar, a bookmark
    });
    assert.equal(typed.status, 200);
    await typed.body?.cancel();
  } finally {
    await engine.close();
  }
});

Deno.test("reads are not origin-checked (the token and the browser's same-origin policy guard them)", async () => {
  const { app, engine } = testApp();
  try {
    const res = await app.request("/vm", {
      headers: { origin: "http://evil.example", "sec-fetch-site": "cross-site" },
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), null, "no CORS grant");
    await res.body?.cancel();
  } finally {
    await engine.close();
  }
});
