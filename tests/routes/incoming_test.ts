import assert from "node:assert/strict";
import { IncomingInfoSchema } from "../../routes/schemas.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import { call, testApp } from "../helpers/app.ts";
import { ramDigest } from "../../testing/test_guest.ts";
import { sourceApp } from "./_helpers.ts";

Deno.test("GET /migrations/incoming answers status none and 0 bytes before arming", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "GET", "/migrations/incoming");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { status: "none", bytes_received: 0 });
  await engine.close();
});

Deno.test("POST /migrations/incoming answers 202 listening with the address", async () => {
  const { app, engine, guest } = testApp();
  const res = await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:4444" });
  assert.equal(res.status, 202);
  assert.equal(res.body.status, "listening");
  assert.equal(res.body.address, "tcp:dst:4444");
  assert.equal(res.body.bytes_received, 0);
  assert.ok(IncomingInfoSchema.safeParse(res.body).success);
  assert.equal(guest.runState, "inmigrate");
  await engine.close();
});

Deno.test("GET /migrations/incoming after arming answers listening with uri and address", async () => {
  const { app, engine } = testApp();
  await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:4445" });
  const res = await call(app, "GET", "/migrations/incoming");
  assert.equal(res.status, 200);
  assert.equal(res.body.status, "listening");
  assert.equal(res.body.uri, "tcp:dst:4445");
  assert.equal(res.body.address, "tcp:dst:4445");
  assert.equal(res.body.bytes_received, 0);
  assert.equal(res.body.error_desc, undefined);
  await engine.close();
});

Deno.test("POST /migrations/incoming with a malformed URI answers 400 bad-uri naming uri", async () => {
  const { app, engine, guest } = testApp();
  const res = await call(app, "POST", "/migrations/incoming", { uri: "tcp:nohostport" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "bad-uri");
  assert.equal(res.body.error.field, "uri");
  assert.equal(guest.runState, "prelaunch");
  assert.equal((await call(app, "GET", "/migrations/incoming")).body.status, "none");
  await engine.close();
});

Deno.test("POST /migrations/incoming with an unknown protocol answers 400 unknown-protocol", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations/incoming", { uri: "rdma:host:1" });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "unknown-protocol");
  assert.equal(res.body.error.field, "uri");
  await engine.close();
});

Deno.test("POST /migrations/incoming without uri answers 400 naming the field", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations/incoming", {});
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "invalid-request");
  assert.equal(res.body.error.field, "uri");
  await engine.close();
});

Deno.test("POST /migrations/incoming with an unknown field answers 400 naming it", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:1", port: 1 });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.field, "port");
  await engine.close();
});

Deno.test("POST /migrations/incoming while listening answers 409 incoming-active", async () => {
  const { app, engine } = testApp();
  assert.equal((await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:1" })).status, 202);
  const res = await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:2" });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "incoming-active");
  const info = await call(app, "GET", "/migrations/incoming");
  assert.equal(info.body.status, "listening");
  assert.equal(info.body.uri, "tcp:dst:1");
  await engine.close();
});

Deno.test("POST /migrations/incoming while the guest runs answers 409 guest-running", async () => {
  const { app, engine, guest } = testApp();
  assert.equal((await call(app, "POST", "/vm/start")).status, 200);
  const res = await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:1" });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "guest-running");
  assert.match(res.body.error.message, /stop/);
  assert.equal(guest.runState, "running");
  assert.equal((await call(app, "GET", "/migrations/incoming")).body.status, "none");
  await engine.close();
});

Deno.test("POST /migrations/incoming on a URI already listened on answers 409 listen-failed", async () => {
  const { app, engine, transports } = testApp();
  using _other = await transports.listen("tcp:dst:7");
  const res = await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:7" });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "listen-failed");
  await engine.close();
});

Deno.test("POST /migrations/incoming then a full in-memory migration leaves the destination completed", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const src = await sourceApp(transports);
  const uri = "tcp:dst:4446";
  assert.equal((await call(dst.app, "POST", "/migrations/incoming", { uri })).status, 202);
  assert.equal((await call(src.app, "POST", "/migrations", { uri })).status, 202);
  await src.engine.migration!.done;
  await dst.engine.incoming!.done;

  assert.equal((await call(src.app, "GET", "/migrations/current")).body.status, "completed");
  const res = await call(dst.app, "GET", "/migrations/incoming");
  assert.equal(res.status, 200);
  assert.equal(res.body.status, "completed", res.body.error_desc);
  assert.ok(res.body.bytes_received > 0);
  assert.ok(res.body.pages.zero > 0);
  assert.ok(res.body.pages.normal > 0);
  assert.equal(typeof res.body.total_time, "number");
  assert.ok(IncomingInfoSchema.safeParse(res.body).success);

  assert.equal(dst.guest.runState, "running");
  assert.equal(dst.guest.counter, 77n);
  const srcDigest = await call(src.app, "GET", "/vm/ram/digest");
  const dstDigest = await call(dst.app, "GET", "/vm/ram/digest");
  assert.equal(dstDigest.body.sha256, srcDigest.body.sha256);
  assert.equal(dstDigest.body.sha256, await ramDigest(src.guest));
  await src.engine.close();
  await dst.engine.close();
});

Deno.test("POST /migrations/incoming that receives a header then garbage fails naming the offset, refuses /vm/start, and can be re-armed", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const uri = "tcp:dst:4447";
  assert.equal((await call(dst.app, "POST", "/migrations/incoming", { uri })).status, 202);

  // A valid header, then an unknown section type: the loader must name byte 8.
  const channel = await transports.connect(uri);
  await channel.write(new Uint8Array([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, 0x99, 2, 3]));
  await channel.finish();
  await dst.engine.incoming!.done;

  const failed = await call(dst.app, "GET", "/migrations/incoming");
  assert.equal(failed.status, 200);
  assert.equal(failed.body.status, "failed");
  assert.match(failed.body.error_desc, /byte 0x8\b/);
  assert.match(failed.body.error_desc, /unknown section type 0x99/);
  assert.equal(dst.guest.runState, "inmigrate");

  const start = await call(dst.app, "POST", "/vm/start");
  assert.equal(start.status, 409);
  assert.equal(start.body.error.code, "guest-incomplete");
  assert.equal(dst.guest.runState, "inmigrate");

  // Re-arm on the same URI, then a real migration goes through.
  const rearm = await call(dst.app, "POST", "/migrations/incoming", { uri });
  assert.equal(rearm.status, 202);
  assert.equal(rearm.body.status, "listening");
  assert.equal(rearm.body.error_desc, undefined);
  const src = await sourceApp(transports);
  assert.equal((await call(src.app, "POST", "/migrations", { uri })).status, 202);
  await src.engine.migration!.done;
  await dst.engine.incoming!.done;
  const done = await call(dst.app, "GET", "/migrations/incoming");
  assert.equal(done.body.status, "completed", done.body.error_desc);
  assert.ok(done.body.bytes_received > 0);
  assert.equal(dst.guest.runState, "running");
  assert.equal(await ramDigest(dst.guest), await ramDigest(src.guest));
  await src.engine.close();
  await dst.engine.close();
});

Deno.test("POST /migrations/incoming: a peer that sends no stream header is dropped; the destination keeps listening, then takes the real source", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const uri = "tcp:dst:4448";
  await call(dst.app, "POST", "/migrations/incoming", { uri });
  const channel = await transports.connect(uri);
  await channel.write(new TextEncoder().encode("NOT A MIGRATION STREAM"));
  await channel.finish();
  let res = await call(dst.app, "GET", "/migrations/incoming");
  while (res.body.refused_peers !== 1) {
    await new Promise((r) => setTimeout(r, 1));
    res = await call(dst.app, "GET", "/migrations/incoming");
  }
  assert.equal(res.body.status, "listening");
  assert.equal(dst.guest.runState, "inmigrate");
  // The real source, connecting after, migrates as usual.
  const src = await sourceApp(transports, 1 << 20);
  assert.equal((await call(src.app, "POST", "/migrations", { uri })).status, 202);
  await src.engine.migration!.done;
  await dst.engine.incoming!.done;
  assert.equal((await call(dst.app, "GET", "/migrations/incoming")).body.status, "completed");
  await src.engine.close();
  await dst.engine.close();
});

Deno.test("POST /migrations/incoming whose peer hangs up early fails as truncated", async () => {
  const transports = new MemoryTransports();
  const dst = testApp({ transports });
  const uri = "tcp:dst:4449";
  await call(dst.app, "POST", "/migrations/incoming", { uri });
  const channel = await transports.connect(uri);
  await channel.write(new Uint8Array([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]));
  await channel.finish();
  await dst.engine.incoming!.done;
  const res = await call(dst.app, "GET", "/migrations/incoming");
  assert.equal(res.body.status, "failed");
  assert.match(res.body.error_desc, /byte 0x8\b/);
  assert.match(res.body.error_desc, /truncated/);
  assert.equal((await call(dst.app, "POST", "/vm/start")).status, 409);
  await dst.engine.close();
});

Deno.test("POST /migrations while armed for incoming answers 409 incoming-active", async () => {
  const { app, engine } = testApp();
  await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:1" });
  const res = await call(app, "POST", "/migrations", { uri: "tcp:peer:1" });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "incoming-active");
  await engine.close();
});

Deno.test("POST /migrations/incoming twice at once arms one and answers 409 incoming-active to the other", async () => {
  const { app, engine } = testApp();
  const answers = await Promise.all([
    call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:21" }),
    call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:22" }),
  ]);
  assert.deepEqual(answers.map((a) => a.status).sort(), [202, 409]);
  const refused = answers.find((a) => a.status === 409)!;
  assert.equal(refused.body.error.code, "incoming-active");
  const armed = answers.find((a) => a.status === 202)!;
  assert.equal((await call(app, "GET", "/migrations/incoming")).body.uri, armed.body.uri);
  await engine.close();
});

Deno.test("POST /migrations racing POST /migrations/incoming answers 409 incoming-active", async () => {
  const { app, engine, transports } = testApp();
  using _peer = await transports.listen("tcp:peer:23");
  const [arm, migrate] = await Promise.all([
    call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:23" }),
    call(app, "POST", "/migrations", { uri: "tcp:peer:23" }),
  ]);
  // Either order is fine, but never both: a guest cannot send and receive at once.
  assert.deepEqual([arm.status, migrate.status].sort(), [202, 409]);
  await engine.close();
});

Deno.test("DELETE /migrations/incoming disarms a listening destination: 202 cancelled, the guest gets its run state back, the URI is free", async () => {
  const { app, engine, guest } = testApp();
  guest.stop("paused");
  await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:4446" });
  assert.equal(guest.runState, "inmigrate");
  const res = await call(app, "DELETE", "/migrations/incoming");
  assert.equal(res.status, 202);
  assert.equal(res.body.status, "cancelled");
  assert.ok(IncomingInfoSchema.safeParse(res.body).success);
  assert.equal(guest.runState, "paused", "nothing was loaded: the guest is as before");
  const again = await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:4446" });
  assert.equal(again.status, 202, "armed again on the same URI");
  await engine.close();
});

Deno.test("DELETE /migrations/incoming with nothing armed answers 200, a no-op", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "DELETE", "/migrations/incoming");
  assert.equal(res.status, 200);
  assert.equal(res.body.status, "none");
  await engine.close();
});

Deno.test("PUT /migrations/capabilities while an incoming migration is armed answers 409 incoming-active", async () => {
  const { app, engine } = testApp();
  await call(app, "POST", "/migrations/incoming", { uri: "tcp:dst:4447" });
  const res = await call(app, "PUT", "/migrations/capabilities", { verify: false });
  assert.equal(res.status, 409);
  assert.equal(res.body.error.code, "incoming-active");
  assert.match(res.body.error.message, /DELETE \/migrations\/incoming/);
  assert.equal(engine.capabilities.verify, true);
  await engine.close();
});

Deno.test("POST /migrations/incoming/resume answers 409 not-interrupted unless interrupted; 400 naming a bad uri", async () => {
  const { app, engine } = testApp();
  const none = await call(app, "POST", "/migrations/incoming/resume", {});
  assert.equal(none.status, 409);
  assert.equal(none.body.error.code, "not-interrupted");
  const bad = await call(app, "POST", "/migrations/incoming/resume", { uri: 5 });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.field, "uri");
  const armed = await call(app, "POST", "/migrations/incoming", { uri: "tcp:memory:9" });
  assert.equal(armed.status, 202);
  const listening = await call(app, "POST", "/migrations/incoming/resume", {});
  assert.equal(listening.status, 409);
  assert.match(listening.body.error.message, /incoming migration is listening, not interrupted/);
  await engine.close();
});
