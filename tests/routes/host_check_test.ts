import assert from "node:assert/strict";
import {
  canonicalHost,
  type HostCheckOptions,
  isLoopbackHost,
  isWildcardHost,
} from "../../routes/host_check.ts";
import { testApp } from "../helpers/app.ts";

/** An API over a running TestGuest whose RAM holds a recognisable secret, with `hosts`. */
function appFor(hosts?: HostCheckOptions) {
  const t = testApp({
    app: { dashboard: "<!doctype html><title>ferry</title>", ...(hosts ? { hosts } : {}) },
  });
  t.guest.blocks[0].bytes.set(new TextEncoder().encode("guest-secret"), 0);
  t.guest.start();
  return t;
}

async function statusFor(app: ReturnType<typeof appFor>["app"], host: string, path = "/vm") {
  const res = await app.request(path, { headers: { host } });
  const text = await res.text();
  return { status: res.status, text };
}

Deno.test("canonicalHost() drops the port, brackets and a trailing dot and lower-cases", () => {
  const cases: [string, string | undefined][] = [
    ["localhost:8080", "localhost"],
    ["LocalHost.", "localhost"],
    ["127.0.0.1:80", "127.0.0.1"],
    ["[::1]:8080", "::1"],
    ["[0:0:0:0:0:0:0:1]", "::1"],
    ["0x7f.1", "127.0.0.1"],
    ["Ferry.Example.ORG:1", "ferry.example.org"],
    ["", undefined],
    ["a@b", undefined],
    ["evil.example/x", undefined],
    ["::1", undefined],
    ["host:port", undefined],
    ["[::1", undefined],
  ];
  for (const [text, want] of cases) assert.equal(canonicalHost(text), want, text);
});

Deno.test("isLoopbackHost() knows localhost, *.localhost, 127.0.0.0/8 and ::1 only", () => {
  for (const h of ["localhost", "app.localhost", "127.0.0.1", "127.9.8.7", "::1", "[::1]"]) {
    assert.ok(isLoopbackHost(h), h);
  }
  for (const h of ["0.0.0.0", "::", "10.0.0.1", "localhost.example", "127.0.0.1.nip.io", "x"]) {
    assert.ok(!isLoopbackHost(h), h);
  }
  assert.ok(isWildcardHost("0.0.0.0") && isWildcardHost("::") && !isWildcardHost("127.0.0.1"));
});

Deno.test("DNS rebinding: a request for another host name is refused 403 host-not-allowed, naming it and --allowed-host", async () => {
  const { app, engine } = appFor({ listen: "127.0.0.1" });
  try {
    for (const path of ["/vm/ram?offset=0&length=64", "/vm", "/", "/openapi.json"]) {
      const res = await statusFor(app, "rebind.attacker.example:8080", path);
      assert.equal(res.status, 403, path);
      const body = JSON.parse(res.text);
      assert.equal(body.error.code, "host-not-allowed");
      assert.match(body.error.message, /"rebind\.attacker\.example"/);
      assert.match(body.error.message, /--allowed-host rebind\.attacker\.example/);
      assert.ok(!res.text.includes("guest-secret"));
    }
    // State-changing requests too: the guest keeps running.
    const stop = await app.request("/vm/stop", {
      method: "POST",
      headers: { host: "rebind.attacker.example" },
    });
    assert.equal(stop.status, 403);
    await stop.body?.cancel();
  } finally {
    await engine.close();
  }
});

Deno.test("a malformed Host header is refused 403 host-not-allowed", async () => {
  const { app, engine } = appFor();
  try {
    for (const host of ["a@127.0.0.1", "127.0.0.1/x", "[::1", ""]) {
      const res = await statusFor(app, host);
      assert.equal(res.status, 403, JSON.stringify(host));
      assert.equal(JSON.parse(res.text).error.code, "host-not-allowed");
    }
  } finally {
    await engine.close();
  }
});

Deno.test("loopback names pass whatever their port, and so do requests without Host", async () => {
  const { app, engine } = appFor({ listen: "127.0.0.1" });
  try {
    for (
      const host of ["127.0.0.1:8080", "localhost", "LOCALHOST.:1", "ferry.localhost", "[::1]:80"]
    ) {
      assert.equal((await statusFor(app, host)).status, 200, host);
    }
    const res = await app.request("/vm"); // in-process: no Host header, the URL says localhost
    assert.equal(res.status, 200);
    await res.body?.cancel();
  } finally {
    await engine.close();
  }
});

Deno.test("the --listen host passes; a wildcard listen adds this machine's addresses, read on demand", async () => {
  const named = appFor({ listen: "ferry-host.lan" });
  try {
    assert.equal((await statusFor(named.app, "ferry-host.lan:8080")).status, 200);
    assert.equal((await statusFor(named.app, "192.0.2.7:8080")).status, 403);
  } finally {
    await named.engine.close();
  }
  let addresses = ["192.0.2.7", "fe80::1"];
  let reads = 0;
  const wildcard = appFor({
    listen: "0.0.0.0",
    interfaces: () => {
      reads++;
      return addresses;
    },
  });
  try {
    assert.equal((await statusFor(wildcard.app, "192.0.2.7:8080")).status, 200);
    assert.equal((await statusFor(wildcard.app, "[fe80::1]:8080")).status, 200);
    assert.equal((await statusFor(wildcard.app, "0.0.0.0:8080")).status, 200);
    assert.equal((await statusFor(wildcard.app, "198.51.100.1:8080")).status, 403);
    // An address the machine gained since start passes too.
    addresses = [...addresses, "198.51.100.1"];
    assert.equal((await statusFor(wildcard.app, "198.51.100.1:8080")).status, 200);
    // Loopback names are answered without reading the interfaces.
    const before = reads;
    assert.equal((await statusFor(wildcard.app, "localhost:8080")).status, 200);
    assert.equal(reads, before);
  } finally {
    await wildcard.engine.close();
  }
  const loopback = appFor({ listen: "127.0.0.1", interfaces: () => ["192.0.2.7"] });
  try {
    assert.equal((await statusFor(loopback.app, "192.0.2.7")).status, 403, "not on a wildcard");
  } finally {
    await loopback.engine.close();
  }
});

Deno.test("--allowed-host names pass, compared without port or case", async () => {
  const { app, engine } = appFor({ listen: "127.0.0.1", allowed: ["Ferry.LAN", "2001:db8::5"] });
  try {
    assert.equal((await statusFor(app, "ferry.lan:8080")).status, 200);
    assert.equal((await statusFor(app, "FERRY.lan")).status, 200);
    assert.equal((await statusFor(app, "[2001:db8::5]:8080")).status, 200);
    assert.equal((await statusFor(app, "other.lan:8080")).status, 403);
  } finally {
    await engine.close();
  }
});
