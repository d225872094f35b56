import assert from "node:assert/strict";
import { connectUnix, listenUnix, MAX_UNIX_PATH_BYTES } from "../../transports/unix.ts";
import {
  assertRejectsMatching,
  assertTransportError,
  pattern,
  readAll,
  writeAllAndFinish,
} from "./_helpers.ts";

/** A fresh temporary directory removed when the test's `using` scope ends. */
function tempDir(): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix: "ferry-unix-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("listenUnix() and connectUnix() carry a few MiB intact", async () => {
  using dir = tempDir();
  const path = `${dir.path}/in.sock`;
  using listener = await listenUnix(`unix:${path}`);
  assert.equal(listener.address, `unix:${path}`);
  const [client, server] = await Promise.all([connectUnix(listener.address), listener.accept()]);
  using _s = server;
  assert.equal(client.peer, `unix:${path}`);
  assert.equal(server.peer, `unix:${path}`);
  const data = pattern(6 << 20, 5);
  const [got] = await Promise.all([readAll(server), writeAllAndFinish(client, data)]);
  assert.deepEqual(got, data);
  assert.equal(client.closed, true);
});

Deno.test("listenUnix() creates the socket with owner-only permissions (0600)", async () => {
  using dir = tempDir();
  const path = `${dir.path}/mode.sock`;
  using _listener = await listenUnix(`unix:${path}`);
  const info = Deno.lstatSync(path);
  assert.equal(info.isSocket, true);
  assert.equal((info.mode ?? 0) & 0o777, 0o600);
});

Deno.test("close() on a unix listener removes the socket file, even with accept() pending", async () => {
  using dir = tempDir();
  const path = `${dir.path}/gone.sock`;
  const listener = await listenUnix(`unix:${path}`);
  const pending = listener.accept();
  assert.equal(exists(path), true);
  listener.close();
  assert.equal(exists(path), false, "removed synchronously by close()");
  await assertRejectsMatching(pending, /is closed/);
  listener.close();
});

Deno.test("listenUnix() right after close() with accept() pending keeps the new socket", async () => {
  // Deno unlinks a unix listener's bound path when its resource is finally
  // dropped, after the pending accept settles; that must not hit the new socket.
  using dir = tempDir();
  const uri = `unix:${dir.path}/again.sock`;
  const first = await listenUnix(uri);
  const pending = first.accept();
  first.close();
  using second = await listenUnix(uri);
  await assertRejectsMatching(pending, /is closed/);
  await new Promise((r) => setTimeout(r, 10));
  const [client, server] = await Promise.all([connectUnix(uri), second.accept()]);
  client.close();
  server.close();
});

Deno.test("listenUnix() leaves nothing but the socket in its directory", async () => {
  using dir = tempDir();
  using _listener = await listenUnix(`unix:${dir.path}/only.sock`);
  const names = [...Deno.readDirSync(dir.path)].map((e) => e.name);
  assert.deepEqual(names, ["only.sock"]);
});

Deno.test("listenUnix() refuses to replace a regular file at the path", async () => {
  using dir = tempDir();
  const path = `${dir.path}/precious`;
  Deno.writeTextFileSync(path, "keep me");
  await assertTransportError(
    () => listenUnix(`unix:${path}`),
    "listen-failed",
    "is a regular file",
    "refusing to replace it",
  );
  assert.equal(Deno.readTextFileSync(path), "keep me");
});

Deno.test("listenUnix() refuses a directory at the path", async () => {
  using dir = tempDir();
  await assertTransportError(
    () => listenUnix(`unix:${dir.path}`),
    "listen-failed",
    "is a directory",
  );
});

Deno.test("listenUnix() replaces a stale socket that nobody listens on", async () => {
  using dir = tempDir();
  const path = `${dir.path}/stale.sock`;
  // A hard link keeps the socket inode after its listener is gone: a stale socket.
  const old = Deno.listen({ transport: "unix", path: `${dir.path}/orig.sock` });
  Deno.linkSync(`${dir.path}/orig.sock`, path);
  old.close();
  assert.equal(Deno.lstatSync(path).isSocket, true);
  await assertTransportError(
    () => connectUnix(`unix:${path}`),
    "connect-failed",
    "connection refused",
  );

  using listener = await listenUnix(`unix:${path}`);
  const [client, server] = await Promise.all([connectUnix(listener.address), listener.accept()]);
  using _s = server;
  const [got] = await Promise.all([readAll(server), writeAllAndFinish(client, pattern(100))]);
  assert.deepEqual(got, pattern(100));
});

Deno.test("listenUnix() on a socket another listener uses fails with address in use", async () => {
  using dir = tempDir();
  const uri = `unix:${dir.path}/busy.sock`;
  using first = await listenUnix(uri);
  await assertTransportError(() => listenUnix(uri), "listen-failed", "address already in use");
  // The liveness probe connected once; the first listener still works.
  const probe = await first.accept();
  assert.equal(await probe.read(new Uint8Array(1)), null);
  probe.close();
  const [client, server] = await Promise.all([connectUnix(uri), first.accept()]);
  client.close();
  server.close();
});

Deno.test("listenUnix() in a missing directory fails with listen-failed", async () => {
  using dir = tempDir();
  await assertTransportError(
    () => listenUnix(`unix:${dir.path}/nope/x.sock`),
    "listen-failed",
    "no such file or directory",
  );
});

Deno.test("listenUnix() and connectUnix() refuse a path longer than sun_path allows", async () => {
  const long = `/tmp/${"x".repeat(MAX_UNIX_PATH_BYTES)}`;
  // parseUri refuses it already: a bad URI, not a failed socket.
  await assertTransportError(() => listenUnix(`unix:${long}`), "bad-uri", "longer than");
  await assertTransportError(() => connectUnix(`unix:${long}`), "bad-uri", "longer than");
});

Deno.test("connectUnix() to a missing socket fails with connect-failed", async () => {
  using dir = tempDir();
  const uri = `unix:${dir.path}/absent.sock`;
  await assertTransportError(
    () => connectUnix(uri),
    "connect-failed",
    `Cannot connect to ${uri}: no such file or directory`,
  );
});

Deno.test("connectUnix() with an aborted signal rejects with its reason", async () => {
  using dir = tempDir();
  using listener = await listenUnix(`unix:${dir.path}/a.sock`);
  const reason = new Error("cancelled");
  await assert.rejects(
    connectUnix(listener.address, AbortSignal.abort(reason)),
    (e) => e === reason,
  );
});

Deno.test("close() on a unix channel rejects a pending write when the peer is not reading", async () => {
  using dir = tempDir();
  using listener = await listenUnix(`unix:${dir.path}/w.sock`);
  const [client, server] = await Promise.all([connectUnix(listener.address), listener.accept()]);
  using _s = server;
  const pending = client.write(new Uint8Array(64 << 20));
  await new Promise((r) => setTimeout(r, 20));
  client.close();
  await assertRejectsMatching(pending, /Cannot write to unix:.*: the channel is closed/);
});
