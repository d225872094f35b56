import assert from "node:assert/strict";
import { AuthBackoff } from "../../routes/auth_backoff.ts";
import { testApp } from "../helpers/app.ts";
import { FakeClock } from "../helpers/fake_clock.ts";

const TOKEN = "owner-Token_0123456789";

/** An API with TOKEN whose back-off runs on a fake clock. */
function lockedApp() {
  const clock = new FakeClock(5000);
  const backoff = new AuthBackoff({ now: clock.now });
  const { app, engine, guest } = testApp({
    app: { dashboard: "<!doctype html><title>ferry</title>", token: TOKEN, authBackoff: backoff },
  });
  guest.start();
  /** A request from `address` (as Deno.serve reports it) with `token`, if any. */
  const from = async (address: string, token?: string, path = "/vm", method = "GET") => {
    const res = await app.request(
      path,
      { method, headers: token === undefined ? {} : { authorization: `Bearer ${token}` } },
      { remoteAddr: { transport: "tcp", hostname: address, port: 40000 } },
    );
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
  };
  return { app, engine, guest, clock, backoff, from };
}

Deno.test("a wrong token locks its address out: 429 too-many-auth-failures with Retry-After, until it runs out", async () => {
  const t = lockedApp();
  try {
    const first = await t.from("127.0.0.1", "guess-000000000000");
    assert.equal(first.status, 401);
    assert.equal(first.body.error.code, "unauthorized");
    // Within the 100 ms lockout: a guess, or no token at all, gets 429.
    for (const token of ["guess-111111111111", undefined]) {
      const held = await t.from("127.0.0.1", token);
      assert.equal(held.status, 429);
      assert.equal(held.body.error.code, "too-many-auth-failures");
      assert.match(held.body.error.message, /try again in 1 s/);
      assert.equal(held.headers.get("retry-after"), "1");
    }
    assert.equal(t.backoff.failures("127.0.0.1"), 1, "requests held back are not counted");
    t.clock.advance(100);
    const second = await t.from("127.0.0.1", "guess-222222222222");
    assert.equal(second.status, 401, "after the lockout the token is checked again");
    assert.equal(t.backoff.lockedFor("127.0.0.1"), 200, "and the next lockout is twice as long");
  } finally {
    await t.engine.close();
  }
});

Deno.test("the right token always passes a lockout: another local user cannot lock the owner out", async () => {
  const t = lockedApp();
  try {
    for (let i = 0; i < 12; i++) {
      await t.from("127.0.0.1", `attacker-guess-${i}-xxxxxxxx`);
      t.clock.advance(t.backoff.lockedFor("127.0.0.1"));
    }
    assert.equal(t.backoff.failures("127.0.0.1"), 12);
    await t.from("127.0.0.1", "attacker-guess-last-xxxxxxx");
    assert.equal(t.backoff.lockedFor("127.0.0.1"), 30_000, "locked out for the longest time");
    const owner = await t.from("127.0.0.1", TOKEN);
    assert.equal(owner.status, 200);
    assert.equal(owner.body.run_state, "running");
    const stop = await t.from("127.0.0.1", TOKEN, "/vm/stop", "POST");
    assert.equal(stop.status, 200);
    assert.equal(t.guest.runState, "paused");
    const attacker = await t.from("127.0.0.1", "attacker-guess-again-xxxxxx");
    assert.equal(attacker.status, 429);
    assert.equal(attacker.headers.get("retry-after"), "30");
  } finally {
    await t.engine.close();
  }
});

Deno.test("the lockout is per remote address", async () => {
  const t = lockedApp();
  try {
    assert.equal((await t.from("192.0.2.1", "wrong-wrong-wrong-1")).status, 401);
    assert.equal((await t.from("192.0.2.1")).status, 429);
    assert.equal((await t.from("192.0.2.2")).status, 401, "another address is not locked out");
    assert.equal((await t.from("192.0.2.2", TOKEN)).status, 200);
  } finally {
    await t.engine.close();
  }
});

Deno.test("a missing or malformed Authorization header is not counted as a failure", async () => {
  const t = lockedApp();
  try {
    assert.equal((await t.from("127.0.0.1")).status, 401);
    const bad = await t.app.request("/vm", { headers: { authorization: "Basic Zm9v" } }, {
      remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
    });
    await bad.body?.cancel();
    assert.equal(bad.status, 400);
    assert.equal(t.backoff.failures("127.0.0.1"), 0);
    assert.equal(t.backoff.lockedFor("127.0.0.1"), 0);
  } finally {
    await t.engine.close();
  }
});

Deno.test("the dashboard page is served during a lockout; it holds no data", async () => {
  const t = lockedApp();
  try {
    await t.from("127.0.0.1", "wrong-wrong-wrong-1");
    assert.ok(t.backoff.lockedFor("127.0.0.1") > 0);
    const res = await t.app.request("/", {}, {
      remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
    });
    assert.equal(res.status, 200);
    assert.match(await res.text(), /<title>ferry<\/title>/);
  } finally {
    await t.engine.close();
  }
});

Deno.test("through a real socket the lockout is keyed on the peer's address", async () => {
  const t = lockedApp();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, t.app.fetch);
  const url = `http://127.0.0.1:${server.addr.port}`;
  try {
    const wrong = await fetch(`${url}/vm`, {
      headers: { authorization: "Bearer not-it-0000000000" },
    });
    await wrong.body?.cancel();
    assert.equal(wrong.status, 401);
    assert.equal(t.backoff.failures("127.0.0.1"), 1);
    const held = await fetch(`${url}/vm`);
    await held.body?.cancel();
    assert.equal(held.status, 429, "the clock is fake: still within the lockout");
    assert.equal(held.headers.get("retry-after"), "1");
    const owner = await fetch(`${url}/vm`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(owner.status, 200);
    await owner.body?.cancel();
  } finally {
    await server.shutdown();
    await t.engine.close();
  }
});
