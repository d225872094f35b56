import assert from "node:assert/strict";
import {
  defaultTokenFile,
  generateToken,
  readTokenFile,
  removeTokenFile,
  TokenFileError,
  writeTokenFile,
} from "../api_token.ts";

function tempDir(): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix: "ferry-token-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}

Deno.test("generateToken() is 32 random bytes in base64url: 43 URL- and header-safe characters", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 100; i++) {
    const token = generateToken();
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    seen.add(token);
  }
  assert.equal(seen.size, 100);
});

Deno.test("defaultTokenFile() prefers $XDG_RUNTIME_DIR, then $HOME/.local/state, by port", () => {
  assert.equal(
    defaultTokenFile(8080, { XDG_RUNTIME_DIR: "/run/user/1000", HOME: "/home/a" }),
    "/run/user/1000/ferry/api-8080.token",
  );
  assert.equal(
    defaultTokenFile(43210, { HOME: "/home/a/" }),
    "/home/a/.local/state/ferry/api-43210.token",
  );
  assert.equal(
    defaultTokenFile(1, { XDG_RUNTIME_DIR: "", HOME: "/root" }),
    "/root/.local/state/ferry/api-1.token",
  );
  assert.equal(defaultTokenFile(1, { XDG_RUNTIME_DIR: "relative", HOME: "also" }), undefined);
  assert.equal(defaultTokenFile(1, {}), undefined);
});

Deno.test("writeTokenFile() creates the file 0600 in a new 0700 directory; readTokenFile() reads it back", () => {
  using dir = tempDir();
  const path = `${dir.path}/ferry/api-8080.token`;
  writeTokenFile(path, "tok-abc", { privateDir: true });
  assert.equal(Deno.statSync(`${dir.path}/ferry`).mode! & 0o777, 0o700);
  assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
  assert.equal(Deno.readTextFileSync(path), "tok-abc\n");
  assert.equal(readTokenFile(path), "tok-abc");
  assert.deepEqual([...Deno.readDirSync(`${dir.path}/ferry`)].map((e) => e.name), [
    "api-8080.token",
  ]);
});

Deno.test("writeTokenFile() makes ferry's own directory private again, not a --token-file's", () => {
  using dir = tempDir();
  Deno.mkdirSync(`${dir.path}/ferry`, { mode: 0o755 });
  Deno.chmodSync(`${dir.path}/ferry`, 0o755);
  writeTokenFile(`${dir.path}/ferry/api-1.token`, "t", { privateDir: true });
  assert.equal(Deno.statSync(`${dir.path}/ferry`).mode! & 0o777, 0o700);
  Deno.mkdirSync(`${dir.path}/shared`, { mode: 0o755 });
  Deno.chmodSync(`${dir.path}/shared`, 0o755);
  writeTokenFile(`${dir.path}/shared/f.token`, "t");
  assert.equal(Deno.statSync(`${dir.path}/shared`).mode! & 0o777, 0o755);
  assert.equal(Deno.statSync(`${dir.path}/shared/f.token`).mode! & 0o777, 0o600);
});

Deno.test("writeTokenFile() replaces a planted file or symlink instead of writing through it", () => {
  using dir = tempDir();
  const victim = `${dir.path}/authorized_keys`;
  Deno.writeTextFileSync(victim, "ssh-ed25519 AAAA owner\n");
  const path = `${dir.path}/api-9.token`;
  Deno.symlinkSync(victim, path);
  writeTokenFile(path, "tok-new");
  assert.equal(Deno.readTextFileSync(victim), "ssh-ed25519 AAAA owner\n");
  assert.ok(Deno.lstatSync(path).isFile);
  assert.equal(readTokenFile(path), "tok-new");
  // A readable file someone left there is replaced by a private one.
  Deno.removeSync(path);
  Deno.writeTextFileSync(path, "old", { mode: 0o644 });
  Deno.chmodSync(path, 0o644);
  writeTokenFile(path, "tok-newer");
  assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
  assert.equal(readTokenFile(path), "tok-newer");
});

Deno.test("writeTokenFile() fails with TokenFileError naming the path", () => {
  using dir = tempDir();
  Deno.writeTextFileSync(`${dir.path}/file`, "");
  assert.throws(
    () => writeTokenFile(`${dir.path}/file/api-1.token`, "t"),
    (e: unknown) => e instanceof TokenFileError && e.message.includes(`${dir.path}/file`),
  );
  assert.throws(() => writeTokenFile("relative.token", "t"), TokenFileError);
  Deno.mkdirSync(`${dir.path}/taken`);
  assert.throws(() => writeTokenFile(`${dir.path}/taken`, "t"), TokenFileError);
});

Deno.test("removeTokenFile() removes the file only while it holds our token", () => {
  using dir = tempDir();
  const path = `${dir.path}/api-1.token`;
  writeTokenFile(path, "ours");
  removeTokenFile(path, "theirs");
  assert.equal(readTokenFile(path), "ours");
  removeTokenFile(path, "ours");
  assert.equal(readTokenFile(path), undefined);
  removeTokenFile(path, "ours"); // already gone: no error
});
