import assert from "node:assert/strict";
import { CapabilitiesSchema } from "../../routes/schemas.ts";
import { call, testApp } from "../helpers/app.ts";

/** QEMU's capabilities all off, ferry's verify on. */
const ALL_OFF = {
  xbzrle: false,
  auto_converge: false,
  zero_blocks: false,
  rdma_pin_all: false,
  verify: true,
  page_refs: false,
  pause_before_switchover: false,
};

Deno.test("GET /migrations/capabilities lists all five capabilities: QEMU's off, verify on", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "GET", "/migrations/capabilities");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, ALL_OFF);
  assert.ok(CapabilitiesSchema.safeParse(res.body).success);
  await engine.close();
});

Deno.test("PUT /migrations/capabilities {rdma_pin_all:true} answers 400 capability-unsupported naming it", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PUT", "/migrations/capabilities", { rdma_pin_all: true });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "capability-unsupported");
  assert.equal(res.body.error.field, "rdma_pin_all");
  assert.match(res.body.error.message, /RDMA/);
  assert.equal(engine.capabilities.rdma_pin_all, false);
  assert.deepEqual((await call(app, "GET", "/migrations/capabilities")).body, ALL_OFF);
  await engine.close();
});

Deno.test("PUT /migrations/capabilities with a non-boolean answers 400 naming the field", async () => {
  const { app, engine } = testApp();
  for (const value of ["yes", 1, null]) {
    const res = await call(app, "PUT", "/migrations/capabilities", { auto_converge: value });
    assert.equal(res.status, 400, `auto_converge: ${value}`);
    assert.equal(res.body.error.code, "invalid-request");
    assert.equal(res.body.error.field, "auto_converge");
  }
  assert.deepEqual(engine.capabilities, ALL_OFF);
  await engine.close();
});

Deno.test("PUT /migrations/capabilities with an unknown capability answers 400 naming it", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PUT", "/migrations/capabilities", { postcopy_ram: false });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.field, "postcopy_ram");
  await engine.close();
});

Deno.test("PUT /migrations/capabilities with a non-object body answers 400", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PUT", "/migrations/capabilities", [true]);
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "invalid-request");
  await engine.close();
});

Deno.test("PUT /migrations/capabilities {xbzrle:false} answers 200 with every capability", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PUT", "/migrations/capabilities", { xbzrle: false });
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, ALL_OFF);
  await engine.close();
});

Deno.test("PUT /migrations/capabilities with an empty body object answers 200 unchanged", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PUT", "/migrations/capabilities", {});
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, ALL_OFF);
  await engine.close();
});

Deno.test("PUT /migrations/capabilities while a migration is active answers 409 migration-active", async () => {
  const { app, engine, transports } = testApp({ ram: 8 << 20 });
  // A peer that never reads: the migration stays active behind backpressure.
  using _listener = await transports.listen("tcp:peer:1");
  assert.equal((await call(app, "POST", "/migrations", { uri: "tcp:peer:1" })).status, 202);
  const res = await call(app, "PUT", "/migrations/capabilities", { xbzrle: false });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "migration-active");
  const get = await call(app, "GET", "/migrations/capabilities");
  assert.equal(get.status, 200);
  assert.deepEqual(get.body, ALL_OFF);
  await call(app, "DELETE", "/migrations/current");
  await engine.migration!.done;
  // Once the migration ended, capabilities can change again.
  assert.equal((await call(app, "PUT", "/migrations/capabilities", { xbzrle: false })).status, 200);
  await engine.close();
});
