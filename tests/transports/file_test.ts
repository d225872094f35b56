import assert from "node:assert/strict";
import { connectFile, listenFile } from "../../transports/file.ts";
import { createTransports } from "../../transports/mod.ts";
import {
  assertRejectsMatching,
  assertTransportError,
  pattern,
  readAll,
  writeAll,
  writeAllAndFinish,
} from "./_helpers.ts";

/** A fresh temporary directory removed when the test's `using` scope ends. */
function tempDir(): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix: "ferry-file-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

Deno.test("file: a save goes to a temporary name and is renamed into place on finish()", async () => {
  using dir = tempDir();
  const path = `${dir.path}/g1.ferry`;
  const ch = await connectFile(`file:${path}`);
  assert.equal(ch.peer, `file:${path}`);
  const data = pattern(3 << 20, 2);
  await writeAll(ch, data);
  const during = names(dir.path);
  assert.equal(during.length, 1);
  assert.match(during[0], /^g1\.ferry\.tmp-[0-9a-f]+$/, "only the temporary name exists meanwhile");
  await ch.finish();
  assert.deepEqual(names(dir.path), ["g1.ferry"]);
  assert.deepEqual(Deno.readFileSync(path), data);
  assert.equal(Deno.statSync(path).mode! & 0o777, 0o600, "a new snapshot is owner-only");
});

Deno.test("file: an existing file is replaced, keeping its permissions", async () => {
  using dir = tempDir();
  const path = `${dir.path}/g1.ferry`;
  Deno.writeFileSync(path, pattern(10 << 20, 1));
  Deno.chmodSync(path, 0o640);
  await writeAllAndFinish(await connectFile(`file:${path}`), pattern(1000, 4));
  assert.deepEqual(Deno.readFileSync(path), pattern(1000, 4));
  assert.equal(Deno.statSync(path).mode! & 0o777, 0o640);
  assert.deepEqual(names(dir.path), ["g1.ferry"]);
});

Deno.test("file: with an offset the bytes before it are kept and the stream starts there", async () => {
  using dir = tempDir();
  const path = `${dir.path}/img`;
  const old = pattern(10_000, 8); // longer than the offset: only its first 4096 bytes survive
  Deno.writeFileSync(path, old);
  const data = pattern(70_000, 9);
  await writeAllAndFinish(await connectFile(`file:${path},offset=4096`), data);
  const got = Deno.readFileSync(path);
  assert.equal(got.length, 4096 + data.length);
  assert.deepEqual(got.subarray(0, 4096), old.subarray(0, 4096));
  assert.deepEqual(got.subarray(4096), data);
});

Deno.test("file: an offset past the end of a short (or missing) file zero-fills up to it", async () => {
  using dir = tempDir();
  const short = `${dir.path}/short`;
  Deno.writeFileSync(short, new TextEncoder().encode("HDR!"));
  await writeAllAndFinish(await connectFile(`file:${short},offset=0x100`), pattern(10));
  const got = Deno.readFileSync(short);
  assert.deepEqual(got.subarray(0, 4), new TextEncoder().encode("HDR!"));
  assert.deepEqual(got.subarray(4, 256), new Uint8Array(252));
  assert.deepEqual(got.subarray(256), pattern(10));

  const fresh = `${dir.path}/fresh`;
  await writeAllAndFinish(await connectFile(`file:${fresh},offset=512`), pattern(10));
  const f = Deno.readFileSync(fresh);
  assert.deepEqual(f.subarray(0, 512), new Uint8Array(512));
  assert.deepEqual(f.subarray(512), pattern(10));
});

Deno.test("file: a cancelled save removes the temporary file and leaves the old one alone", async () => {
  using dir = tempDir();
  const path = `${dir.path}/g1.ferry`;
  Deno.writeFileSync(path, pattern(5000, 1));
  const ch = await connectFile(`file:${path}`);
  await writeAll(ch, pattern(1 << 20));
  ch.close();
  assert.deepEqual(names(dir.path), ["g1.ferry"]);
  assert.deepEqual(Deno.readFileSync(path), pattern(5000, 1));
  await assertRejectsMatching(ch.write(pattern(10)), /closed/);
  await assertRejectsMatching(ch.finish(), /closed/);
});

Deno.test("file: a save that cannot be renamed into place fails finish() and cleans up", async () => {
  using dir = tempDir();
  const path = `${dir.path}/g1.ferry`;
  const ch = await connectFile(`file:${path}`);
  await writeAll(ch, pattern(4096));
  Deno.mkdirSync(`${path}/inside`, { recursive: true }); // something else took the name
  await assertRejectsMatching(ch.finish(), /Cannot finish file:.*g1\.ferry/);
  assert.deepEqual(names(dir.path), ["g1.ferry"]);
  assert.ok(Deno.statSync(path).isDirectory, "the directory is untouched");
});

Deno.test("file: connect refuses a missing directory, a directory and a non-regular file", async () => {
  using dir = tempDir();
  await assertTransportError(
    () => connectFile(`file:${dir.path}/no/such/x`),
    "connect-failed",
    `directory ${dir.path}/no/such does not exist`,
  );
  await assertTransportError(
    () => connectFile(`file:${dir.path}`),
    "connect-failed",
    "a directory",
  );
  await assertTransportError(
    () => connectFile("file:/dev/null"),
    "connect-failed",
    "not a regular",
  );
  assert.deepEqual(names(dir.path), []);
});

Deno.test("file: an aborted signal rejects with its reason and leaves no file", async () => {
  using dir = tempDir();
  const abort = new AbortController();
  abort.abort(new Error("cancelled"));
  await assertRejectsMatching(connectFile(`file:${dir.path}/x`, abort.signal), /cancelled/);
  assert.deepEqual(names(dir.path), []);
});

Deno.test("file: restore reads from the offset to the end", async () => {
  using dir = tempDir();
  const path = `${dir.path}/img`;
  const data = pattern(2 << 20, 6);
  const whole = new Uint8Array(4096 + data.length);
  whole.fill(0xee, 0, 4096);
  whole.set(data, 4096);
  Deno.writeFileSync(path, whole);
  using listener = await listenFile(`file:${path},offset=4096`);
  assert.equal(listener.address, `file:${path},offset=4096`);
  const ch = await listener.accept();
  await assertRejectsMatching(listener.accept(), /already accepted/);
  listener.close(); // as the engine does: the channel stays usable
  assert.deepEqual(await readAll(ch), data);
  ch.close();
});

Deno.test("file: restore fails at listen() for a missing file, a directory or a short file", async () => {
  using dir = tempDir();
  await assertTransportError(
    () => listenFile(`file:${dir.path}/missing.ferry`),
    "listen-failed",
    "no such file",
  );
  await assertTransportError(() => listenFile(`file:${dir.path}`), "listen-failed", "directory");
  Deno.writeFileSync(`${dir.path}/small`, new Uint8Array(100));
  await assertTransportError(
    () => listenFile(`file:${dir.path}/small,offset=100`),
    "listen-failed",
    "100 bytes",
  );
});

Deno.test("file: closing a listener before accept() releases the file", async () => {
  using dir = tempDir();
  Deno.writeFileSync(`${dir.path}/img`, pattern(10));
  const listener = await listenFile(`file:${dir.path}/img`);
  listener.close();
  await assertRejectsMatching(listener.accept(), /closed/);
});

Deno.test("createTransports() saves and restores through file:", async () => {
  using dir = tempDir();
  const uri = `file:${dir.path}/s.ferry,offset=64`;
  const transports = createTransports();
  transports.validate(uri);
  await writeAllAndFinish(await transports.connect(uri), pattern(50_000));
  using listener = await transports.listen(uri);
  const ch = await listener.accept();
  assert.deepEqual(await readAll(ch), pattern(50_000));
  ch.close();
  await assertTransportError(() => transports.validate("file:relative.img"), "bad-uri", "absolute");
});
