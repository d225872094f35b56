import assert from "node:assert/strict";
import { ParametersSchema } from "../../routes/schemas.ts";
import { call, testApp } from "../helpers/app.ts";

const DEFAULTS = {
  max_bandwidth: 33554432,
  downtime_limit: 30,
  xbzrle_cache_size: 67108864,
  cpu_throttle_initial: 20,
  cpu_throttle_increment: 10,
  progress_timeout: 60000,
  stall_windows: 600,
  stall_action: "fail",
  incoming_page_budget: 4096,
  tls_cert: "",
  tls_key: "",
  tls_ca: "",
  tls_hostname: "",
  migration_secret: "",
  snapshot_key: "",
  compress_method: "none",
  compress_level: 1,
  resume_grace: 60000,
  resume_auto: false,
  multifd_channels: 1,
  completion_timeout_ms: 0,
  completion_timeout_per_gib: 0,
  on_timeout: "cancel",
};

Deno.test("GET /migrations/parameters answers the seed defaults", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "GET", "/migrations/parameters");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, DEFAULTS);
  assert.ok(ParametersSchema.safeParse(res.body).success);
  await engine.close();
});

Deno.test("PATCH /migrations/parameters applies a subset and GET reflects it", async () => {
  const { app, engine } = testApp();
  const patch = { max_bandwidth: 1 << 30, downtime_limit: 300 };
  const res = await call(app, "PATCH", "/migrations/parameters", patch);
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { ...DEFAULTS, ...patch });
  assert.deepEqual((await call(app, "GET", "/migrations/parameters")).body, {
    ...DEFAULTS,
    ...patch,
  });
  assert.deepEqual(engine.parameters, { ...DEFAULTS, ...patch });
  await engine.close();
});

Deno.test("PATCH /migrations/parameters applies every field and the limits themselves", async () => {
  const { app, engine } = testApp();
  const patch = {
    max_bandwidth: 1,
    downtime_limit: 2_000_000,
    xbzrle_cache_size: 4096,
    cpu_throttle_initial: 99,
    cpu_throttle_increment: 1,
    progress_timeout: 86_400_000,
    stall_windows: 0,
    stall_action: "throttle",
    incoming_page_budget: 2,
    compress_method: "lz4",
    compress_level: 19,
    resume_grace: 0,
    resume_auto: true,
    multifd_channels: 16,
  };
  const res = await call(app, "PATCH", "/migrations/parameters", patch);
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { ...DEFAULTS, ...patch });
  assert.deepEqual((await call(app, "GET", "/migrations/parameters")).body, {
    ...DEFAULTS,
    ...patch,
  });
  await engine.close();
});

Deno.test("PATCH /migrations/parameters with an empty object answers 200 unchanged", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PATCH", "/migrations/parameters", {});
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, DEFAULTS);
  await engine.close();
});

const BAD: [string, string, unknown][] = [
  ["max_bandwidth", "0", 0],
  ["max_bandwidth", "a negative", -1],
  ["max_bandwidth", "a fraction", 1.5],
  ["max_bandwidth", "a string", "fast"],
  ["max_bandwidth", "null", null],
  ["downtime_limit", "0", 0],
  ["downtime_limit", "a negative", -30],
  ["downtime_limit", "a fraction", 0.5],
  ["downtime_limit", "a string", "30"],
  ["downtime_limit", "a value above 2000000", 2_000_001],
  ["xbzrle_cache_size", "0", 0],
  ["xbzrle_cache_size", "a negative", -4096],
  ["xbzrle_cache_size", "a fraction", 4096.5],
  ["xbzrle_cache_size", "a string", "64M"],
  ["xbzrle_cache_size", "less than a page", 4095],
  ["cpu_throttle_initial", "0", 0],
  ["cpu_throttle_initial", "a negative", -20],
  ["cpu_throttle_initial", "a fraction", 20.5],
  ["cpu_throttle_initial", "a string", "20"],
  ["cpu_throttle_initial", "100", 100],
  ["cpu_throttle_increment", "0", 0],
  ["cpu_throttle_increment", "a negative", -10],
  ["cpu_throttle_increment", "a fraction", 10.5],
  ["cpu_throttle_increment", "a string", "10"],
  ["cpu_throttle_increment", "100", 100],
  ["progress_timeout", "below 10 ms", 9],
  ["progress_timeout", "a fraction", 300.5],
  ["progress_timeout", "a value above a day", 86_400_001],
  ["stall_windows", "a negative", -1],
  ["stall_action", "an unknown action", "cancel"],
  ["tls_cert", "a relative path", "dst.pem"],
  ["tls_key", "a number", 1],
  ["tls_ca", "a path with a NUL", "/etc/ca\0.pem"],
  ["tls_hostname", "a name with a space", "ferry dst"],
  ["migration_secret", "a relative path", "secret"],
  ["snapshot_key", "a path over 4096 characters", "/" + "k".repeat(4096)],
  ["compress_method", "an unknown method", "gzip"],
  ["compress_level", "0", 0],
  ["compress_level", "20", 20],
  ["resume_grace", "a negative", -1],
  ["resume_grace", "a value above a day", 86_400_001],
  ["resume_auto", "a string", "yes"],
  ["multifd_channels", "0", 0],
  ["multifd_channels", "17", 17],
  ["multifd_channels", "a fraction", 2.5],
  ["multifd_channels", "a string", "4"],
];

for (const [field, what, value] of BAD) {
  Deno.test(`PATCH /migrations/parameters rejects ${field} ${what} naming the field`, async () => {
    const { app, engine } = testApp();
    const res = await call(app, "PATCH", "/migrations/parameters", { [field]: value });
    assert.equal(res.status, 400);
    assert.equal(res.body.error.code, "invalid-request");
    assert.equal(res.body.error.field, field);
    assert.match(res.body.error.message, new RegExp(field));
    assert.deepEqual(engine.parameters, DEFAULTS);
    await engine.close();
  });
}

Deno.test("PATCH /migrations/parameters rejects an unknown field naming it", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PATCH", "/migrations/parameters", { speed: 100 });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.code, "invalid-request");
  assert.equal(res.body.error.field, "speed");
  assert.deepEqual(engine.parameters, DEFAULTS);
  await engine.close();
});

Deno.test("PATCH /migrations/parameters with one bad field applies none of the others", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PATCH", "/migrations/parameters", {
    max_bandwidth: 1 << 20,
    downtime_limit: 0,
  });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.field, "downtime_limit");
  assert.deepEqual(engine.parameters, DEFAULTS);
  await engine.close();
});

Deno.test("PATCH /migrations/parameters with malformed JSON answers 400 with a JSON error", async () => {
  const { app, engine } = testApp();
  const res = await call(app, "PATCH", "/migrations/parameters", "{max_bandwidth:");
  assert.equal(res.status, 400);
  assert.equal(typeof res.body.error.message, "string");
  assert.deepEqual(engine.parameters, DEFAULTS);
  await engine.close();
});

Deno.test("PATCH /migrations/parameters max_bandwidth during an active migration applies", async () => {
  const { app, engine, transports } = testApp({ ram: 8 << 20 });
  // A peer that never reads keeps the migration active.
  using _listener = await transports.listen("tcp:peer:1");
  assert.equal((await call(app, "POST", "/migrations", { uri: "tcp:peer:1" })).status, 202);
  assert.ok(engine.migration!.isActive);
  const res = await call(app, "PATCH", "/migrations/parameters", { max_bandwidth: 1 << 20 });
  assert.equal(res.status, 200);
  assert.equal(res.body.max_bandwidth, 1 << 20);
  assert.equal(engine.parameters.max_bandwidth, 1 << 20);
  assert.equal((await call(app, "GET", "/migrations/parameters")).body.max_bandwidth, 1 << 20);
  assert.ok(engine.migration!.isActive);
  await call(app, "DELETE", "/migrations/current");
  await engine.close();
});

Deno.test("PATCH /migrations/parameters bounds xbzrle_cache_size by the guest's RAM (400 naming it), not by 2^53", async () => {
  const { app, engine } = testApp();
  const ram = engine.guest.blocks.reduce((n, b) => n + b.length, 0);
  for (const value of [ram + 4096, 9007199254740991]) {
    const res = await call(app, "PATCH", "/migrations/parameters", { xbzrle_cache_size: value });
    assert.equal(res.status, 400, `${value}`);
    assert.equal(res.body.error.field, "xbzrle_cache_size");
  }
  const ok = await call(app, "PATCH", "/migrations/parameters", { xbzrle_cache_size: ram });
  assert.equal(ok.status, 200);
  await engine.close();
});

Deno.test('PATCH /migrations/parameters sets the security parameters to absolute paths and a name, and "" unsets them', async () => {
  const { app, engine } = testApp();
  const set = {
    tls_cert: "/etc/ferry/dst.pem",
    tls_key: "/etc/ferry/dst.key",
    tls_ca: "/etc/ferry/ca.pem",
    tls_hostname: "ferry-dst.example",
    migration_secret: "/etc/ferry/migration.secret",
    snapshot_key: "/etc/ferry/snapshot.key",
  };
  const res = await call(app, "PATCH", "/migrations/parameters", set);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.deepEqual(res.body, { ...DEFAULTS, ...set });
  assert.ok(ParametersSchema.safeParse(res.body).success);
  const unset = Object.fromEntries(Object.keys(set).map((k) => [k, ""]));
  const back = await call(app, "PATCH", "/migrations/parameters", unset);
  assert.deepEqual(back.body, DEFAULTS);
  await engine.close();
});
