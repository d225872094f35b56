import assert from "node:assert/strict";
import { DigestSchema, VmInfoSchema } from "../../routes/schemas.ts";
import { call, testApp } from "../helpers/app.ts";
import { ramDigest } from "../../testing/test_guest.ts";

Deno.test("GET /vm answers run state, RAM size, page size, workload, throttle and ops", async () => {
  const { app, engine } = testApp({ ram: 2 << 20 });
  const res = await call(app, "GET", "/vm");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, {
    guest: "synthetic",
    run_state: "prelaunch",
    ram_size: 2 << 20,
    page_size: 4096,
    workload: "idle",
    throttle: 0,
    ops: 0,
  });
  assert.ok(VmInfoSchema.safeParse(res.body).success);
  await engine.close();
});

Deno.test("POST /vm/start answers 200 with run_state running", async () => {
  const { app, engine, guest } = testApp();
  const res = await call(app, "POST", "/vm/start");
  assert.equal(res.status, 200);
  assert.equal(res.body.run_state, "running");
  assert.equal(guest.runState, "running");
  assert.ok(VmInfoSchema.safeParse(res.body).success);
  // Starting a running guest is a no-op.
  const again = await call(app, "POST", "/vm/start");
  assert.equal(again.status, 200);
  assert.equal(again.body.run_state, "running");
  await engine.close();
});

Deno.test("POST /vm/stop answers 200 with run_state paused", async () => {
  const { app, engine, guest } = testApp();
  await call(app, "POST", "/vm/start");
  const res = await call(app, "POST", "/vm/stop");
  assert.equal(res.status, 200);
  assert.equal(res.body.run_state, "paused");
  assert.equal(guest.runState, "paused");
  assert.equal((await call(app, "GET", "/vm")).body.run_state, "paused");
  // Stopping a paused guest is a no-op, and it can be resumed.
  assert.equal((await call(app, "POST", "/vm/stop")).body.run_state, "paused");
  assert.equal((await call(app, "POST", "/vm/start")).body.run_state, "running");
  await engine.close();
});

Deno.test("POST /vm/stop of a guest never started leaves it in prelaunch", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/vm/stop");
  assert.equal(res.status, 200);
  assert.equal(res.body.run_state, "prelaunch");
  await engine.close();
});

Deno.test("GET /vm/ram/digest answers blocks, sha256 and run_state", async () => {
  const { app, engine, guest } = testApp({ ram: 1 << 20 });
  guest.fillRandom(5);
  const res = await call(app, "GET", "/vm/ram/digest");
  assert.equal(res.status, 200);
  assert.ok(DigestSchema.safeParse(res.body).success);
  assert.equal(res.body.blocks.length, 1);
  assert.equal(res.body.blocks[0].name, "pc.ram");
  assert.equal(res.body.blocks[0].length, 1 << 20);
  assert.equal(typeof res.body.blocks[0].sha256, "string");
  assert.equal(res.body.sha256, await ramDigest(guest));
  assert.equal(res.body.run_state, "prelaunch");
  // The digest follows the RAM.
  guest.write(0, new Uint8Array([1, 2, 3]));
  const after = await call(app, "GET", "/vm/ram/digest");
  assert.notEqual(after.body.sha256, res.body.sha256);
  await call(app, "POST", "/vm/start");
  assert.equal((await call(app, "GET", "/vm/ram/digest")).body.run_state, "running");
  await engine.close();
});

Deno.test("POST /vm/start in inmigrate answers 409 guest-incomplete", async () => {
  const { app, engine, guest } = testApp();
  await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:1" });
  assert.equal((await call(app, "GET", "/vm")).body.run_state, "inmigrate");
  const res = await call(app, "POST", "/vm/start");
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "guest-incomplete");
  assert.equal(guest.runState, "inmigrate");
  // Stop is a no-op there.
  const stop = await call(app, "POST", "/vm/stop");
  assert.equal(stop.status, 200);
  assert.equal(stop.body.run_state, "inmigrate");
  await engine.close();
});

Deno.test("POST /vm/start during switchover (finish-migrate) answers 409 migration-active", async () => {
  const { app, engine, guest } = testApp();
  guest.setRunState("finish-migrate");
  const res = await call(app, "POST", "/vm/start");
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "migration-active");
  assert.equal(guest.runState, "finish-migrate");
  await engine.close();
});

Deno.test("GET /vm/ram answers the guest's bytes as octet-stream", async () => {
  const { app, engine, guest } = testApp();
  guest.write(4096 + 10, new Uint8Array([7, 8, 9]));
  const res = await app.request("/vm/ram?block=pc.ram&offset=4106&length=3");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/octet-stream");
  assert.deepEqual(new Uint8Array(await res.arrayBuffer()), new Uint8Array([7, 8, 9]));
  await engine.close();
});

Deno.test("GET /vm/ram without offset reads from offset 0, as documented", async () => {
  const { app, engine, guest } = testApp();
  guest.write(0, new Uint8Array([1, 2, 3, 4]));
  const res = await app.request("/vm/ram?length=4");
  assert.equal(res.status, 200);
  assert.deepEqual(new Uint8Array(await res.arrayBuffer()), new Uint8Array([1, 2, 3, 4]));
  await engine.close();
});

Deno.test("GET /vm/ram beyond the block or of an unknown block answers a JSON error", async () => {
  const { app, engine } = testApp({ ram: 1 << 20 });
  const beyond = await call(app, "GET", `/vm/ram?offset=${(1 << 20) - 1}&length=2`);
  assert.equal(beyond.status, 400);
  assert.equal(typeof beyond.body.error.message, "string");
  const unknown = await call(app, "GET", "/vm/ram?block=nope&offset=0&length=1");
  assert.equal(unknown.status, 404);
  assert.match(unknown.body.error.message, /nope/);
  const missing = await call(app, "GET", "/vm/ram?offset=0");
  assert.equal(missing.status, 400);
  assert.equal(missing.body.error.field, "length");
  await engine.close();
});

Deno.test("GET /vm/ram without length says, in a sentence, that length is required and what it is", async () => {
  const { app, engine } = testApp({ ram: 1 << 20 });
  const missing = await call(app, "GET", "/vm/ram?offset=0");
  assert.equal(missing.status, 400);
  assert.deepEqual(missing.body.error, {
    code: "invalid-request",
    field: "length",
    message:
      'Invalid field "length": required: the number of bytes to read, a whole number from 1 to 16777216',
  });
  assert.doesNotMatch(missing.body.error.message, /NaN|expected number/);
  await engine.close();
});

Deno.test("GET /vm/ram with a length or offset that is not a whole number names the value", async () => {
  const { app, engine } = testApp({ ram: 1 << 20 });
  const cases: [string, string, RegExp][] = [
    ["length=abc", "length", /expected the number of bytes to read as a whole number .*got "abc"/],
    ["length=1.5", "length", /got "1\.5"/],
    ["length=0", "length", /the number of bytes to read must be at least 1/],
    ["length=16777217", "length", /must be at most 16777216/],
    ["length=4&offset=-1", "offset", /expected the byte offset to read from .*got "-1"/],
  ];
  for (const [query, field, message] of cases) {
    const res = await call(app, "GET", `/vm/ram?${query}`);
    assert.equal(res.status, 400, query);
    assert.equal(res.body.error.field, field, query);
    assert.match(res.body.error.message, message, query);
    assert.doesNotMatch(res.body.error.message, /NaN/, query);
  }
  await engine.close();
});
