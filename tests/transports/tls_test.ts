import assert from "node:assert/strict";
import { makeTestPki, SERVER_NAME } from "../../testing/certs.ts";
import { TlsInterceptor } from "../../testing/tls_interceptor.ts";
import { connectTls, describeHandshakeError, listenTls } from "../../transports/tls.ts";
import { listenTcp } from "../../transports/tcp.ts";
import type { Channel, Listener } from "../../transports/transport.ts";
import {
  assertRejectsMatching,
  assertTransportError,
  pattern,
  readExactly,
  writeAll,
} from "./_helpers.ts";

// One set of certificates for the whole file (openssl takes a moment per certificate).
const pki = await makeTestPki();
globalThis.addEventListener("unload", () => Deno.removeSync(pki.dir, { recursive: true }));

const SERVER = { certFile: pki.server.cert, keyFile: pki.server.key };
const TRUSTING = { caFile: pki.ca, hostname: SERVER_NAME };

/** The port of a tcp:HOST:PORT address. */
function portOf(address: string): number {
  return Number(/:(\d+)$/.exec(address)![1]);
}

/**
 * What the listener's side of one connection saw: the first read's outcome (a TLS
 * listener's handshake runs on it).
 */
async function firstRead(listener: Listener): Promise<string> {
  const ch = await listener.accept();
  try {
    const n = await ch.read(new Uint8Array(16));
    return `read ${n}`;
  } catch (e) {
    return (e as Error).message;
  } finally {
    ch.close();
  }
}

Deno.test("connectTls() and listenTls() carry a few MiB each way, checked against the CA and the expected name", async () => {
  using listener = await listenTls("tcp:127.0.0.1:0", SERVER);
  assert.match(listener.address, /^tcp:127\.0\.0\.1:\d+$/);
  const up = pattern(3 << 20, 3);
  const down = pattern(1 << 20, 5);
  const [client, server]: Channel[] = await Promise.all([
    connectTls(listener.address, TRUSTING),
    listener.accept(),
  ]);
  using _c = client;
  using _s = server;
  assert.equal(client.peer, listener.address);
  const [gotUp, gotDown] = await Promise.all([
    readExactly(server, up.length),
    readExactly(client, down.length),
    writeAll(client, up),
    writeAll(server, down),
  ]);
  assert.deepEqual(gotUp, up);
  assert.deepEqual(gotDown, down);
});

Deno.test("connectTls() without tls_hostname checks the certificate for the URI's host (127.0.0.1 is in its names)", async () => {
  using listener = await listenTls("tcp:127.0.0.1:0", SERVER);
  const [client, server] = await Promise.all([
    connectTls(listener.address, { caFile: pki.ca }),
    listener.accept(),
  ]);
  await writeAll(client, Uint8Array.of(1, 2, 3));
  assert.deepEqual([...await readExactly(server, 3)], [1, 2, 3]);
  client.close();
  server.close();
});

Deno.test("connectTls() refuses a destination whose certificate another CA signed, naming tls_ca; the destination sees UnknownCA", async () => {
  using listener = await listenTls("tcp:127.0.0.1:0", SERVER);
  const seen = firstRead(listener);
  await assertTransportError(
    () => connectTls(listener.address, { caFile: pki.rogueCa, hostname: SERVER_NAME }),
    "connect-failed",
    "over TLS: the destination's certificate is not signed by the CA in",
    "(tls_ca)",
  );
  assert.match(await seen, /refused the TLS handshake: it does not trust the CA/);
});

Deno.test("connectTls() refuses an expired certificate", async () => {
  using listener = await listenTls("tcp:127.0.0.1:0", {
    certFile: pki.expired.cert,
    keyFile: pki.expired.key,
  });
  const seen = firstRead(listener);
  await assertTransportError(
    () => connectTls(listener.address, TRUSTING),
    "connect-failed",
    "the destination's certificate has expired",
  );
  assert.match(await seen, /expired/i);
});

Deno.test("connectTls() refuses a certificate for another name, naming the expected one and tls_hostname", async () => {
  using listener = await listenTls("tcp:127.0.0.1:0", SERVER);
  const seen = firstRead(listener);
  await assertTransportError(
    () => connectTls(listener.address, { caFile: pki.ca, hostname: "ferry-other.test" }),
    "connect-failed",
    `the destination's certificate is not for the name "ferry-other.test" (tls_hostname)`,
  );
  await seen;
  // And a certificate of the right CA made for another host is refused for the expected name.
  using other = await listenTls("tcp:127.0.0.1:0", {
    certFile: pki.otherName.cert,
    keyFile: pki.otherName.key,
  });
  const seen2 = firstRead(other);
  await assertTransportError(
    () => connectTls(other.address, TRUSTING),
    "connect-failed",
    `not for the name "${SERVER_NAME}"`,
  );
  await seen2;
});

Deno.test("a plaintext peer and a TLS peer do not talk: each side says the other does not speak TLS", async () => {
  // A plaintext source at a TLS destination: the destination's first read fails.
  using tls = await listenTls("tcp:127.0.0.1:0", SERVER);
  const seen = firstRead(tls);
  const plain = await Deno.connect({ hostname: "127.0.0.1", port: portOf(tls.address) });
  await plain.write(Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3));
  assert.match(await seen, /does not speak TLS/);
  plain.close();
  // A TLS source at a plaintext destination that answers with stream bytes.
  using tcp = await listenTcp("tcp:127.0.0.1:0");
  const answered = (async () => {
    const ch = await tcp.accept();
    await ch.write(new TextEncoder().encode("QEVM not a TLS server hello....."));
    // Wait for the client to give up (it closes on the bad answer).
    await ch.read(new Uint8Array(4096)).catch(() => null);
    ch.close();
  })();
  await assertTransportError(
    () => connectTls(tcp.address, TRUSTING),
    "connect-failed",
    "does not speak TLS",
  );
  await answered;
});

Deno.test("listenTls() needs a readable PEM certificate and its own key, and says which file is wrong", async () => {
  await assertTransportError(
    () => listenTls("tcp:127.0.0.1:0", { keyFile: pki.server.key }),
    "listen-failed",
    "needs a certificate and its key (tls_cert, tls_key)",
  );
  await assertTransportError(
    () => listenTls("tcp:127.0.0.1:0", { ...SERVER, certFile: `${pki.dir}/missing.pem` }),
    "listen-failed",
    `cannot read the certificate ${pki.dir}/missing.pem (tls_cert): no such file`,
  );
  await assertTransportError(
    () => listenTls("tcp:127.0.0.1:0", { ...SERVER, certFile: pki.secret }),
    "listen-failed",
    "(tls_cert) holds no PEM certificate",
  );
  await assertTransportError(
    () => listenTls("tcp:127.0.0.1:0", { ...SERVER, keyFile: pki.rogue.key }),
    "listen-failed",
    `the key ${pki.rogue.key} (tls_key) is not the key of ${pki.server.cert}`,
  );
  await assertTransportError(
    () => connectTls("tcp:127.0.0.1:1", { caFile: `${pki.dir}/none.pem` }),
    "connect-failed",
    "(tls_ca): no such file",
  );
});

Deno.test("a man in the middle that re-terminates TLS with its own certificate is refused before it sees a byte", async () => {
  using listener = await listenTls("tcp:127.0.0.1:0", SERVER);
  const target = { hostname: "127.0.0.1", port: portOf(listener.address), caFile: pki.ca };
  // Its own CA, for the right names.
  {
    await using mitm = await TlsInterceptor.start(target, pki.rogue);
    await assertTransportError(
      () => connectTls(mitm.address, TRUSTING),
      "connect-failed",
      "not signed by the CA in",
    );
    await mitm.close();
    assert.equal(mitm.intercepted, 0);
    assert.equal(mitm.refusals.length, 1);
  }
  // A certificate from the right CA, but made for another host.
  {
    await using mitm = await TlsInterceptor.start(target, pki.otherName);
    await assertTransportError(
      () => connectTls(mitm.address, TRUSTING),
      "connect-failed",
      `not for the name "${SERVER_NAME}"`,
    );
    await mitm.close();
    assert.equal(mitm.intercepted, 0);
  }
});

Deno.test("connectTls() honours an aborted signal and a refused port", async () => {
  const abort = new AbortController();
  abort.abort(new Error("cancelled by the test"));
  await assertRejectsMatching(
    connectTls("tcp:127.0.0.1:1", TRUSTING, abort.signal),
    /cancelled by the test/,
  );
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  await assertTransportError(
    () => connectTls(`tcp:127.0.0.1:${port}`, TRUSTING),
    "connect-failed",
    "connection refused",
  );
});

Deno.test("describeHandshakeError() names the cause and the parameter that decides it", () => {
  const tls = { caFile: "/ca.pem" };
  assert.match(
    describeHandshakeError(new Error("invalid peer certificate: UnknownIssuer"), "d", tls),
    /not signed by the CA in \/ca\.pem \(tls_ca\)/,
  );
  assert.match(
    describeHandshakeError(new Error("invalid peer certificate: UnknownIssuer"), "d", {}),
    /Deno's built-in roots \(set tls_ca/,
  );
  assert.match(describeHandshakeError(new Error("x NotValidYet"), "d", tls), /not valid yet/);
  assert.match(
    describeHandshakeError(new Error("unexpected eof"), "d", tls),
    /closed the connection/,
  );
});
