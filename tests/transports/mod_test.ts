import assert from "node:assert/strict";
import { makeTestPki, SERVER_NAME } from "../../testing/certs.ts";
import { createTransports } from "../../transports/mod.ts";
import { assertTransportError, pattern, readAll, writeAllAndFinish } from "./_helpers.ts";

Deno.test("createTransports() dispatches tcp: URIs to the TCP transport", async () => {
  const transports = createTransports();
  using listener = await transports.listen("tcp:127.0.0.1:0");
  assert.match(listener.address, /^tcp:127\.0\.0\.1:[1-9]\d*$/);
  const [client, server] = await Promise.all([
    transports.connect(listener.address),
    listener.accept(),
  ]);
  using _s = server;
  const data = pattern(1 << 20);
  const [got] = await Promise.all([readAll(server), writeAllAndFinish(client, data)]);
  assert.deepEqual(got, data);
});

Deno.test("createTransports() dispatches unix: URIs to the unix transport", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "ferry-mod-" });
  try {
    const transports = createTransports();
    const uri = `unix:${dir}/m.sock`;
    using listener = await transports.listen(uri);
    assert.equal(listener.address, uri);
    const [client, server] = await Promise.all([transports.connect(uri), listener.accept()]);
    using _s = server;
    const [got] = await Promise.all([readAll(server), writeAllAndFinish(client, pattern(5000))]);
    assert.deepEqual(got, pattern(5000));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("createTransports() refuses exec: with exec-disabled unless allowExec", async () => {
  const transports = createTransports({ allowExec: false });
  await assertTransportError(() => transports.connect("exec:cat"), "exec-disabled", "--allow-exec");
  await assertTransportError(() => transports.listen("exec:cat"), "exec-disabled");
  await assertTransportError(() => transports.validate("exec:cat"), "exec-disabled");
  await assertTransportError(() => createTransports().validate("exec:cat"), "exec-disabled");
});

Deno.test("createTransports() validates exec:, fd: and file: without opening anything", async () => {
  const transports = createTransports({ allowExec: true });
  transports.validate("exec:cat > /nonexistent/dir/x"); // the command is not run
  transports.validate("file:/nonexistent/dir/x.ferry"); // nor the file created
  transports.validate("file:/tmp/ferry.img,offset=4096");
  await assertTransportError(() => transports.validate("fd:987654"), "bad-fd", "fd:987654");
});

Deno.test("createTransports() passes parseUri errors through (bad-uri, unknown-protocol)", async () => {
  const transports = createTransports();
  await assertTransportError(() => transports.connect("tcp:127.0.0.1"), "bad-uri");
  await assertTransportError(() => transports.listen("file:relative.img"), "bad-uri", "absolute");
  await assertTransportError(() => transports.connect("rdma:1.2.3.4:1"), "unknown-protocol");
  await assertTransportError(() => transports.validate("nonsense"), "unknown-protocol");
});

Deno.test("createTransports().validate() accepts tcp: and unix: without opening anything", () => {
  const transports = createTransports();
  transports.validate("tcp:127.0.0.1:1");
  transports.validate("tcp:[::1]:4444");
  transports.validate("unix:/nonexistent/dir/x.sock");
});

Deno.test("createTransports().validate() refuses tcp: port 0 to connect to, not to listen on", async () => {
  const transports = createTransports();
  await assertTransportError(
    () => transports.validate("tcp:127.0.0.1:0", "connect"),
    "bad-uri",
    "port 0",
  );
  transports.validate("tcp:127.0.0.1:0", "listen");
  transports.validate("tcp:127.0.0.1:0"); // no direction: either way
  // connect() checks its own direction: bad-uri at once, not a failed connection later.
  await assertTransportError(() => transports.connect("tcp:127.0.0.1:0"), "bad-uri", "port 0");
  using listener = await transports.listen("tcp:127.0.0.1:0");
  assert.match(listener.address, /:[1-9]\d*$/);
});

Deno.test("createTransports() refuses relative and over-long unix: paths before opening anything", async () => {
  const transports = createTransports();
  await assertTransportError(() => transports.validate("unix:rel.sock"), "bad-uri", "absolute");
  await assertTransportError(() => transports.listen("unix:rel.sock"), "bad-uri", "absolute");
  const long = `unix:/tmp/${"x".repeat(110)}`;
  await assertTransportError(() => transports.validate(long), "bad-uri", "longer than");
  await assertTransportError(() => transports.connect(long), "bad-uri", "longer than");
});

Deno.test("createTransports() connect() failures keep the connect-failed code", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await assertTransportError(
    () => createTransports().connect(`tcp:127.0.0.1:${port}`),
    "connect-failed",
    "connection refused",
  );
});

Deno.test("createTransports() refuses a plaintext listen on a non-loopback tcp: address (insecure-migration) unless TLS or insecureMigration", async () => {
  await using pki = await makeTestPki();
  const strict = createTransports();
  await assertTransportError(
    () => strict.listen("tcp:0.0.0.0:0"),
    "insecure-migration",
    "Refusing to listen on tcp:0.0.0.0:0 without TLS: 0.0.0.0 is not a loopback address",
    "--insecure-migration",
  );
  // Loopback stays plaintext.
  (await strict.listen("tcp:127.0.0.1:0")).close();
  // With TLS, or when allowed, 0.0.0.0 listens.
  (await strict.listen("tcp:0.0.0.0:0", {
    tls: { certFile: pki.server.cert, keyFile: pki.server.key },
  })).close();
  (await createTransports({ insecureMigration: true }).listen("tcp:0.0.0.0:0")).close();
  // A migration secret alone is not encryption.
  await assertTransportError(
    () => strict.listen("tcp:0.0.0.0:0", { secretFile: pki.secret }),
    "insecure-migration",
  );
});

Deno.test("createTransports() runs the migration secret's exchange on tcp: with TLS and on unix:, and refuses a wrong secret", async () => {
  await using pki = await makeTestPki();
  const t = createTransports();
  const server = { tls: { certFile: pki.server.cert, keyFile: pki.server.key } };
  const client = { tls: { caFile: pki.ca, hostname: SERVER_NAME } };
  const unixUri = `unix:${pki.dir}/m.sock`;
  for (
    const [uri, listenSec, connectSec] of [
      ["tcp:127.0.0.1:0", server, client],
      [unixUri, {}, {}],
    ] as const
  ) {
    using listener = await t.listen(uri, { ...listenSec, secretFile: pki.secret });
    assert.ok(listener.authenticate, `${uri}: the listener authenticates its peers`);
    // The right secret: both ends pass and the stream follows.
    const [c, s] = await Promise.all([
      t.connect(listener.address, undefined, { ...connectSec, secretFile: pki.secret }),
      listener.accept().then(async (ch) => {
        await listener.authenticate!(ch);
        return ch;
      }),
    ]);
    const [got] = await Promise.all([readAll(s), writeAllAndFinish(c, pattern(3000))]);
    assert.deepEqual(got, pattern(3000));
    s.close();
    // Another secret: refused, and the connection is closed.
    const accepted = listener.accept().then((ch) =>
      listener.authenticate!(ch).then(() => "accepted", (e) => (e as Error).message).finally(() =>
        ch.close()
      )
    );
    await assert.rejects(
      t.connect(listener.address, undefined, { ...connectSec, secretFile: pki.otherSecret }),
      /does not hold this ferry's migration secret/,
    );
    assert.match(await accepted, /closed the connection|reset/);
  }
});

Deno.test("createTransports() names an unreadable secret or snapshot key file before opening anything", async () => {
  const t = createTransports();
  await assertTransportError(
    () => t.listen("tcp:127.0.0.1:0", { secretFile: "/nonexistent/secret" }),
    "listen-failed",
    "Cannot read the migration secret /nonexistent/secret: no such file",
  );
  await assertTransportError(
    () => t.connect("file:/tmp/x.ferry", undefined, { snapshotKeyFile: "/nonexistent/key" }),
    "connect-failed",
    "Cannot read the snapshot key /nonexistent/key: no such file",
  );
});

Deno.test("createTransports() seals file: streams with the snapshot key and opens them only with it", async () => {
  await using pki = await makeTestPki();
  const t = createTransports();
  const uri = `file:${pki.dir}/g.ferry`;
  const data = pattern(1_500_000, 8);
  const out = await t.connect(uri, undefined, { snapshotKeyFile: pki.snapshotKey });
  await writeAllAndFinish(out, data);
  const onDisk = await Deno.readFile(`${pki.dir}/g.ferry`);
  assert.equal(new TextDecoder().decode(onDisk.subarray(0, 8)), "FERRYENC");
  {
    using listener = await t.listen(uri, { snapshotKeyFile: pki.snapshotKey });
    using ch = await listener.accept();
    assert.deepEqual(await readAll(ch), data);
  }
  {
    using listener = await t.listen(uri, { snapshotKeyFile: pki.otherSnapshotKey });
    using ch = await listener.accept();
    await assert.rejects(readAll(ch), /encrypted with another key/);
  }
});
