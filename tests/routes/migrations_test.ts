import assert from "node:assert/strict";
import { call, testApp } from "../helpers/app.ts";

Deno.test("GET /migrations/current answers status none before any migration", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "GET", "/migrations/current");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { status: "none" });
  await engine.close();
});

Deno.test("POST /migrations without uri answers 400 naming the field", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", {});
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "invalid-request");
  assert.equal(res.body.error.field, "uri");
  await engine.close();
});

Deno.test("POST /migrations with a wrongly typed field answers 400 naming it", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", { uri: "tcp:127.0.0.1:1", blk: "yes" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.field, "blk");
  await engine.close();
});

Deno.test("POST /migrations with an unknown field answers 400 naming it", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", { uri: "tcp:127.0.0.1:1", speed: 5 });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.field, "speed");
  await engine.close();
});

Deno.test("POST /migrations with malformed JSON answers 400 with a JSON error", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", "{not json");
  assert.equal(res.status, 400);
  assert.equal(typeof res.body.error.message, "string");
  await engine.close();
});

Deno.test("POST /migrations with an unknown protocol answers 400 unknown-protocol", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", { uri: "rdma:host:1" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "unknown-protocol");
  assert.equal(res.body.error.field, "uri");
  await engine.close();
});

Deno.test("POST /migrations with a malformed tcp URI answers 400 bad-uri", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", { uri: "tcp:nohostport" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "bad-uri");
  await engine.close();
});

Deno.test("POST /migrations with blk answers 400 when the guest has no disk", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", { uri: "tcp:127.0.0.1:1", blk: true });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "capability-unsupported");
  await engine.close();
});

Deno.test("POST /migrations to a URI nobody listens on answers 202, then fails with the reason", async () => {
  const { app, engine, guest } = testApp();
  guest.start();
  const res = await call(app, "POST", "/migrations", { uri: "tcp:127.0.0.1:9" });
  assert.equal(res.status, 202);
  assert.equal(res.body.status, "setup");
  await engine.migration!.done;
  const after = await call(app, "GET", "/migrations/current");
  assert.equal(after.body.status, "failed");
  assert.match(after.body.error_desc, /refused/);
  assert.equal(guest.runState, "running");
  await engine.close();
});

Deno.test("POST /migrations while one is active answers 409 migration-active", async () => {
  const { app, engine, transports } = testApp({ ram: 8 << 20 });
  using _listener = await transports.listen("tcp:peer:1");
  const first = await call(app, "POST", "/migrations", { uri: "tcp:peer:1" });
  assert.equal(first.status, 202);
  const second = await call(app, "POST", "/migrations", { uri: "tcp:peer:1" });
  assert.equal(second.status, 409);
  assert.equal(second.body.error.code, "migration-active");
  await call(app, "DELETE", "/migrations/current");
  await engine.close();
});

Deno.test("POST /migrations while a blocker exists answers 409 with the reasons", async () => {
  const { app, engine } = testApp();
  await call(app, "POST", "/migrations/blockers", { reason: "passthrough device" });
  const res = await call(app, "POST", "/migrations", { uri: "tcp:127.0.0.1:1" });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "migration-blocked");
  assert.deepEqual(res.body.error.reasons, ["passthrough device"]);
  await engine.close();
});

Deno.test("DELETE /migrations/current answers 200 no-op when nothing is active", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "DELETE", "/migrations/current");
  assert.equal(res.status, 200);
  assert.equal(res.body.status, "none");
  await engine.close();
});

Deno.test("DELETE /migrations/current answers 202 and the migration ends cancelled, guest running", async () => {
  const { app, engine, guest, transports } = testApp({ ram: 8 << 20 });
  guest.start();
  using _listener = await transports.listen("tcp:peer:2");
  await call(app, "POST", "/migrations", { uri: "tcp:peer:2" });
  const res = await call(app, "DELETE", "/migrations/current");
  assert.equal(res.status, 202);
  assert.equal(res.body.status, "cancelling");
  await engine.migration!.done;
  assert.equal((await call(app, "GET", "/migrations/current")).body.status, "cancelled");
  assert.equal(guest.runState, "running");
  await engine.close();
});

Deno.test("unknown routes answer 404 with the JSON error shape", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "GET", "/nope");
  assert.equal(res.status, 404);
  assert.equal(res.body.error.code, "not-found");
  await engine.close();
});

Deno.test("POST /migrations to tcp: port 0 answers 400 bad-uri naming uri (port 0 is for listening)", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations", { uri: "tcp:127.0.0.1:0" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "bad-uri");
  assert.equal(res.body.error.field, "uri");
  assert.equal(engine.current().status, "none");
  await engine.close();
});

Deno.test("POST /migrations/current/resume without uri answers 400 naming the field; with nothing interrupted 409 not-interrupted", async () => {
  const { app, engine } = testApp();
  const bad = await call(app, "POST", "/migrations/current/resume", {});
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.field, "uri");
  const wrong = await call(app, "POST", "/migrations/current/resume", { uri: 7 });
  assert.equal(wrong.status, 400);
  assert.equal(wrong.body.error.field, "uri");
  const none = await call(app, "POST", "/migrations/current/resume", { uri: "tcp:127.0.0.1:1" });
  assert.equal(none.status, 409);
  assert.equal(none.body.error.code, "not-interrupted");
  assert.match(none.body.error.message, /there was no migration, not interrupted/);
  await engine.close();
});

Deno.test("POST /migrations/current/continue answers 409 not-paused when no migration waits in pre-switchover", async () => {
  const { app, engine } = testApp();
  try {
    const res = await call(app, "POST", "/migrations/current/continue");
    assert.equal(res.status, 409);
    assert.equal(res.body.error.code, "not-paused");
    assert.match(res.body.error.message, /pre-switchover.*"none"/);
  } finally {
    await engine.close();
  }
});
