import assert from "node:assert/strict";
import { isJsonType } from "../../routes/json_body.ts";
import { testApp } from "../helpers/app.ts";

Deno.test("isJsonType() accepts application/json with parameters, nothing else", () => {
  assert.ok(isJsonType("application/json"));
  assert.ok(isJsonType("Application/JSON; charset=utf-8"));
  for (const t of ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]) {
    assert.ok(!isJsonType(t), t);
  }
  assert.ok(!isJsonType("application/jsonp"));
});

Deno.test("a non-JSON body answers 415 unsupported-media-type, and nothing happens", async () => {
  const { app, engine, guest } = testApp();
  guest.start();
  try {
    const cases: [string, string, string][] = [
      ["/vm/stop", "text/plain", "x"],
      ["/migrations", "text/plain", JSON.stringify({ uri: "tcp:127.0.0.1:1" })],
      ["/migrations/blockers", "application/x-www-form-urlencoded", "reason=csrf"],
      ["/migrations/blockers", "multipart/form-data; boundary=x", "--x--"],
    ];
    for (const [path, type, body] of cases) {
      const res = await app.request(path, {
        method: "POST",
        headers: { "content-type": type },
        body,
      });
      assert.equal(res.status, 415, `${path} ${type}`);
      const answer = await res.json();
      assert.equal(answer.error.code, "unsupported-media-type");
      assert.match(answer.error.message, /Content-Type: application\/json/);
    }
    assert.equal(guest.runState, "running");
    assert.equal(engine.current().status, "none");
    assert.equal(engine.blockers.length, 0);
  } finally {
    await engine.close();
  }
});

Deno.test("a body without Content-Type answers 415 unsupported-media-type, never http-415", async () => {
  const { app, engine } = testApp();
  try {
    // With a length: refused before any route.
    const framed = await app.request("/migrations/blockers", {
      method: "POST",
      headers: { "content-length": "17" },
      body: new TextEncoder().encode('{"reason":"nope"}'),
    });
    assert.equal(framed.status, 415);
    assert.equal((await framed.json()).error.code, "unsupported-media-type");
    // Without one (an in-process body): the route's own media-type gate, same answer.
    const bare = await app.request("/migrations/blockers", {
      method: "POST",
      body: new TextEncoder().encode('{"reason":"nope"}'),
    });
    assert.equal(bare.status, 415);
    assert.deepEqual(await bare.json(), {
      error: {
        code: "unsupported-media-type",
        message: "A request body must be JSON sent with Content-Type: application/json",
      },
    });
    assert.equal(engine.blockers.length, 0);
  } finally {
    await engine.close();
  }
});

Deno.test("bodiless POST and DELETE (curl -X POST) and JSON bodies pass", async () => {
  const { app, engine, guest } = testApp();
  guest.start();
  try {
    const stop = await app.request("/vm/stop", { method: "POST" });
    assert.equal(stop.status, 200);
    await stop.body?.cancel();
    // An empty body declared as such passes whatever its type.
    const empty = await app.request("/vm/start", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "content-length": "0" },
    });
    assert.equal(empty.status, 200);
    await empty.body?.cancel();
    const json = await app.request("/migrations/blockers", {
      method: "POST",
      headers: { "content-type": "application/json; charset=utf-8" },
      body: JSON.stringify({ reason: "maintenance" }),
    });
    assert.equal(json.status, 201);
    await json.body?.cancel();
    const del = await app.request("/migrations/current", { method: "DELETE" });
    assert.equal(del.status, 200);
    await del.body?.cancel();
  } finally {
    await engine.close();
  }
});
