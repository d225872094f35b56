import assert from "node:assert/strict";
import { BlockerSchema } from "../../routes/schemas.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { call, testApp } from "../helpers/app.ts";

Deno.test("GET /migrations/blockers answers an empty list at first", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "GET", "/migrations/blockers");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, []);
  await engine.close();
});

Deno.test("POST /migrations/blockers answers 201 with the new blocker's id", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations/blockers", { reason: "vfio device" });
  assert.equal(res.status, 201);
  assert.ok(BlockerSchema.safeParse(res.body).success);
  assert.equal(typeof res.body.id, "string");
  assert.ok(res.body.id.length > 0);
  assert.equal(res.body.reason, "vfio device");
  await engine.close();
});

Deno.test("GET /migrations/blockers lists every blocker added, with distinct ids", async () => {
  const { app, engine } = testApp();
  const a = await call(app, "POST", "/migrations/blockers", { reason: "first" });
  const b = await call(app, "POST", "/migrations/blockers", { reason: "second" });
  assert.notEqual(a.body.id, b.body.id);
  const res = await call(app, "GET", "/migrations/blockers");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, [a.body, b.body]);
  await engine.close();
});

Deno.test("DELETE /migrations/blockers/{id} answers 200 with the removed blocker", async () => {
  const { app, engine } = testApp();
  const a = await call(app, "POST", "/migrations/blockers", { reason: "first" });
  const b = await call(app, "POST", "/migrations/blockers", { reason: "second" });
  const res = await call(app, "DELETE", `/migrations/blockers/${a.body.id}`);
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, a.body);
  assert.deepEqual((await call(app, "GET", "/migrations/blockers")).body, [b.body]);
  const again = await call(app, "DELETE", `/migrations/blockers/${a.body.id}`);
  assert.equal(again.status, 404);
  await engine.close();
});

Deno.test("DELETE /migrations/blockers/{id} with an unknown id answers 404 blocker-not-found", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "DELETE", "/migrations/blockers/999");
  assert.equal(res.status, 404);
  assert.equal(res.body.error.code, "blocker-not-found");
  assert.match(res.body.error.message, /999/);
  await engine.close();
});

Deno.test("DELETE /migrations/blockers/{id} with an over-long id answers 400 naming id", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "DELETE", `/migrations/blockers/${"x".repeat(65)}`);
  assert.equal(res.status, 400);
  assert.equal(res.body.error.field, "id");
  await engine.close();
});

Deno.test("POST /migrations/blockers with an empty reason answers 400 naming reason", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations/blockers", { reason: "" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "invalid-request");
  assert.equal(res.body.error.field, "reason");
  assert.deepEqual(engine.blockers, []);
  await engine.close();
});

Deno.test("POST /migrations/blockers without reason or with a non-string answers 400 naming reason", async () => {
  const { app, engine } = testApp();
  for (const body of [{}, { reason: 5 }, { reason: "x".repeat(1025) }]) {
    const res = await call(app, "POST", "/migrations/blockers", body);
    assert.equal(res.status, 400, JSON.stringify(body).slice(0, 40));
    assert.equal(res.body.error.field, "reason");
  }
  assert.deepEqual(engine.blockers, []);
  await engine.close();
});

Deno.test("POST /migrations/blockers with an unknown field answers 400 naming it", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations/blockers", { reason: "x", owner: "me" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.field, "owner");
  await engine.close();
});

Deno.test("DELETE /migrations/blockers/{id} of the last blocker lets POST /migrations through", async () => {
  const { app, engine, transports } = testApp();
  using _listener = await transports.listen("tcp:peer:1");
  const blocker = await call(app, "POST", "/migrations/blockers", { reason: "busy" });
  assert.equal((await call(app, "POST", "/migrations", { uri: "tcp:peer:1" })).status, 409);
  await call(app, "DELETE", `/migrations/blockers/${blocker.body.id}`);
  assert.equal((await call(app, "POST", "/migrations", { uri: "tcp:peer:1" })).status, 202);
  await call(app, "DELETE", "/migrations/current");
  await engine.close();
});

Deno.test("POST /migrations/blockers while a migration is active answers 409 migration-active and adds nothing", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  await call(dst.app, "POST", "/migrations/incoming", { uri: "tcp:dst:4460" });
  const src = testApp({ transports, ram: 4 << 20 });
  src.guest.fillRandom(3);
  // 1 MiB/s for 4 MiB: active for seconds.
  await call(src.app, "PATCH", "/migrations/parameters", { max_bandwidth: 1 << 20 });
  assert.equal((await call(src.app, "POST", "/migrations", { uri: "tcp:dst:4460" })).status, 202);
  const res = await call(src.app, "POST", "/migrations/blockers", { reason: "vfio device" });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "migration-active");
  assert.deepEqual((await call(src.app, "GET", "/migrations/blockers")).body, []);
  src.engine.cancel();
  await src.engine.close();
  await dst.engine.close();
});
