import assert from "node:assert/strict";
import { connectTcp, listenTcp } from "../../transports/tcp.ts";
import {
  assertRejectsMatching,
  assertTransportError,
  pattern,
  readAll,
  readExactly,
  settlesWithin,
  sleep,
  writeAll,
  writeAllAndFinish,
} from "./_helpers.ts";

/** Whether this machine can listen on the IPv6 loopback (containers often cannot). */
function ipv6LoopbackAvailable(): boolean {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
}

/** A port nobody listens on: bound once by the OS, then released. */
function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}

Deno.test("listenTcp() reports the real port when asked for port 0", async () => {
  using listener = await listenTcp("tcp:127.0.0.1:0");
  const m = /^tcp:127\.0\.0\.1:(\d+)$/.exec(listener.address);
  assert.ok(m, listener.address);
  assert.ok(Number(m[1]) > 0);
});

Deno.test("connectTcp() and listenTcp() carry a few MiB each way intact", async () => {
  using listener = await listenTcp("tcp:127.0.0.1:0");
  const up = pattern(5 << 20, 7);
  const down = pattern(3 << 20, 9);
  const [client, server] = await Promise.all([connectTcp(listener.address), listener.accept()]);
  using _c = client;
  using _s = server;
  assert.equal(client.peer, listener.address);
  assert.match(server.peer, /^tcp:127\.0\.0\.1:\d+$/);
  // Both directions at once (finish() closes the whole channel, so count bytes instead).
  const [gotUp, gotDown] = await Promise.all([
    readExactly(server, up.length),
    readExactly(client, down.length),
    writeAll(client, up),
    writeAll(server, down),
  ]);
  assert.deepEqual(gotUp, up);
  assert.deepEqual(gotDown, down);
});

Deno.test({
  name: "listenTcp() and connectTcp() work over [::1] with a bracketed address",
  ignore: !ipv6LoopbackAvailable(), // IPv6 loopback is not configured on this machine
  fn: async () => {
    using listener = await listenTcp("tcp:[::1]:0");
    assert.match(listener.address, /^tcp:\[::1\]:\d+$/);
    const [client, server] = await Promise.all([connectTcp(listener.address), listener.accept()]);
    using _s = server;
    assert.equal(client.peer, listener.address);
    const data = pattern(1 << 20);
    const [got] = await Promise.all([readAll(server), writeAllAndFinish(client, data)]);
    assert.deepEqual(got, data);
  },
});

Deno.test("listenTcp() reports a host name as the address it bound", async () => {
  using listener = await listenTcp("tcp:localhost:0");
  assert.match(listener.address, /^tcp:(127\.0\.0\.1|\[::1\]):\d+$/);
});

Deno.test("connectTcp() to a closed port fails with connect-failed naming the refusal", async () => {
  const uri = `tcp:127.0.0.1:${closedPort()}`;
  const err = await assertTransportError(
    () => connectTcp(uri),
    "connect-failed",
    `Cannot connect to ${uri}: connection refused`,
  );
  assert.ok(err.cause instanceof Deno.errors.ConnectionRefused);
});

Deno.test("connectTcp() to an unknown host name fails with connect-failed naming resolution", async () => {
  await assertTransportError(
    () => connectTcp("tcp:no-such-host.invalid:4444"),
    "connect-failed",
    "tcp:no-such-host.invalid:4444",
    "not resolved",
  );
});

Deno.test("connectTcp() rejects bad and non-tcp URIs before connecting", async () => {
  await assertTransportError(() => connectTcp("tcp:127.0.0.1"), "bad-uri");
  await assertTransportError(() => connectTcp("unix:/tmp/x.sock"), "bad-uri", "tcp:HOST:PORT");
});

Deno.test("connectTcp() rejects with the abort reason when aborted during connect", async () => {
  // A full accept queue makes Linux drop further SYNs, so the next connect hangs.
  using blocker = Deno.listen({ hostname: "127.0.0.1", port: 0, tcpBacklog: 1 });
  const uri = `tcp:127.0.0.1:${blocker.addr.port}`;
  const fillers: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      fillers.push(await Deno.connect({ hostname: "127.0.0.1", port: blocker.addr.port }));
    }
    const ac = new AbortController();
    const reason = new Error("migration cancelled");
    const pending = connectTcp(uri, ac.signal);
    assert.equal(await settlesWithin(pending, 100), false, "connect should hang on a full backlog");
    ac.abort(reason);
    await assert.rejects(pending, (err) => err === reason);
  } finally {
    for (const c of fillers) c.close();
  }
});

Deno.test("connectTcp() with an already aborted signal rejects without connecting", async () => {
  using listener = await listenTcp("tcp:127.0.0.1:0");
  const reason = new Error("too late");
  await assert.rejects(
    connectTcp(listener.address, AbortSignal.abort(reason)),
    (e) => e === reason,
  );
});

Deno.test("listenTcp() on a port in use fails with listen-failed naming the reason", async () => {
  using first = await listenTcp("tcp:127.0.0.1:0");
  const err = await assertTransportError(
    () => listenTcp(first.address),
    "listen-failed",
    `Cannot listen on ${first.address}: address already in use`,
  );
  assert.ok(err.cause instanceof Deno.errors.AddrInUse);
});

Deno.test("listenTcp() on an address that is not local fails with listen-failed", async () => {
  await assertTransportError(
    () => listenTcp("tcp:192.0.2.1:0"),
    "listen-failed",
    "address not available",
  );
});

Deno.test("close() rejects a pending write when the peer is not reading", async () => {
  using listener = await listenTcp("tcp:127.0.0.1:0");
  const [client, server] = await Promise.all([connectTcp(listener.address), listener.accept()]);
  using _s = server;
  // Far more than loopback socket buffers hold: the write must block.
  const pending = client.write(new Uint8Array(64 << 20));
  assert.equal(await settlesWithin(pending, 50), false, "write should block on a full socket");
  client.close();
  assert.equal(client.closed, true);
  await assertRejectsMatching(
    pending,
    /Cannot write to tcp:127\.0\.0\.1:\d+: the channel is closed/,
  );
  await assertRejectsMatching(client.write(new Uint8Array(1)), /the channel is closed/);
  await assertRejectsMatching(client.read(new Uint8Array(1)), /the channel is closed/);
  client.close(); // idempotent
});

Deno.test("close() rejects a pending read", async () => {
  using listener = await listenTcp("tcp:127.0.0.1:0");
  const [client, server] = await Promise.all([connectTcp(listener.address), listener.accept()]);
  using _s = server;
  const pending = client.read(new Uint8Array(16));
  await sleep(10);
  client.close();
  await assertRejectsMatching(pending, /Cannot read from .*: the channel is closed/);
});

Deno.test("finish() delivers all bytes then EOF and closes the channel", async () => {
  using listener = await listenTcp("tcp:127.0.0.1:0");
  const [client, server] = await Promise.all([connectTcp(listener.address), listener.accept()]);
  using _s = server;
  const data = pattern(2 << 20, 3);
  // Several writes in flight at once must still arrive in order.
  const writes = [0, 1, 2, 3].map((i) => client.write(data.subarray(i << 19, (i + 1) << 19)));
  const finished = client.finish();
  const got = await readAll(server);
  await Promise.all([...writes, finished]);
  assert.deepEqual(got, data);
  assert.equal(client.closed, true);
  assert.equal(await server.read(new Uint8Array(1)), null, "EOF stays EOF");
  await assertRejectsMatching(client.finish(), /the channel is closed/);
});

Deno.test("write() fails once the peer has gone, later writes too; what the peer sent before still reads", async () => {
  using listener = await listenTcp("tcp:127.0.0.1:0");
  const [client, server] = await Promise.all([connectTcp(listener.address), listener.accept()]);
  using _c = client;
  await server.write(new TextEncoder().encode("bye"));
  server.close();
  const err = await assertRejectsMatching(
    (async () => {
      for (let i = 0; i < 1000; i++) await client.write(new Uint8Array(64 << 10));
    })(),
    /Cannot write to tcp:127\.0\.0\.1:\d+: (broken pipe|connection reset)/,
  );
  assert.ok(err.cause instanceof Error);
  await assertRejectsMatching(client.write(new Uint8Array(1)), /Cannot write to tcp:/);
  // The peer's last words are not lost with the write side (a reset may end reads early).
  const buf = new Uint8Array(8);
  const n = await client.read(buf).catch(() => null);
  if (n !== null) assert.equal(new TextDecoder().decode(buf.subarray(0, n)), "bye");
  client.close();
  assert.equal(client.closed, true);
});

Deno.test("accept() rejects once the listener is closed, and close() is idempotent", async () => {
  const listener = await listenTcp("tcp:127.0.0.1:0");
  const pending = listener.accept();
  listener.close();
  await assertRejectsMatching(pending, /Listener tcp:127\.0\.0\.1:\d+ is closed/);
  await assertRejectsMatching(listener.accept(), /is closed/);
  listener.close();
});
