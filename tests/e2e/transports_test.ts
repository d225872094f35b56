/**
 * End to end over exec:, fd: and file: with real ferry processes: every successful
 * case proves the destination's RAM digest equals the source's.
 */
import assert from "node:assert/strict";
import { type FerryClient, FerryProcess, FerryShell } from "../../testing/ferry_process.ts";
import { waitUntil } from "../helpers/wait.ts";
import { processesMatching, waitGone } from "../transports/_processes.ts";

/** Unlimited in practice: 100 GB/s, as the QEMU comparison runs use. */
const UNLIMITED = 100_000_000_000;

const FINAL = ["completed", "failed", "cancelled"];

function tempDir(): { path: string } & AsyncDisposable {
  const path = Deno.makeTempDirSync({ prefix: "ferry-e2e-tr-" });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }).catch(() => {}),
  };
}

/** Starts a migration to `uri` with unlimited bandwidth and waits for its final state. */
// deno-lint-ignore no-explicit-any
async function migrateTo(src: FerryClient, uri: string): Promise<any> {
  assert.equal(
    (await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED })).status,
    200,
  );
  const started = await src.api("POST", "/migrations", { uri });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  return await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status), 120_000);
}

/** Waits for the destination's incoming migration to complete. */
async function incomingCompleted(dst: FerryClient): Promise<void> {
  const info = await dst.waitFor(
    "/migrations/incoming",
    (b) => b.status === "completed" || b.status === "failed",
    120_000,
  );
  assert.equal(info.status, "completed", JSON.stringify(info));
}

/** The source handed its guest over: postmigrate, and the paused destination holds the same RAM. */
async function assertSameRam(src: FerryClient, dst: FerryClient): Promise<void> {
  const a = await src.api("GET", "/vm/ram/digest");
  const b = await dst.api("GET", "/vm/ram/digest");
  assert.equal(a.body.run_state, "postmigrate");
  assert.equal(b.body.run_state, "paused");
  assert.equal(b.body.sha256, a.body.sha256, "destination RAM equals source RAM");
}

/** Starts a destination restoring from `uri` (--no-autostart), with extra flags. */
async function restore(uri: string, ram: string, ...flags: string[]): Promise<FerryProcess> {
  const dst = await FerryProcess.destination(ram, uri, flags);
  assert.equal(dst.incoming, uri, dst.output());
  return dst;
}

const QEVM = [0x51, 0x45, 0x56, 0x4d];

Deno.test("e2e exec: cat > F on the source, then a new ferry --incoming 'exec:cat F'", async () => {
  await using dir = tempDir();
  const f = `${dir.path}/snap.bin`;
  await using src = await FerryProcess.start([
    "--ram",
    "64M",
    "--fill",
    "random",
    "--paused",
    "--allow-exec",
  ]);
  const info = await migrateTo(src, `exec:cat > ${f}`);
  assert.equal(info.status, "completed", JSON.stringify(info));
  assert.deepEqual([...Deno.readFileSync(f).subarray(0, 4)], QEVM);
  await using dst = await restore(`exec:cat ${f}`, "64M", "--allow-exec");
  await incomingCompleted(dst);
  await assertSameRam(src, dst);
});

Deno.test("e2e exec: through a compressing pipeline (gzip -c > F, gunzip -c F)", async () => {
  await using dir = tempDir();
  const f = `${dir.path}/snap.gz`;
  await using src = await FerryProcess.start(["--ram", "64M", "--fill", "pattern", "--allow-exec"]);
  const info = await migrateTo(src, `exec:gzip -c > ${f}`);
  assert.equal(info.status, "completed", JSON.stringify(info));
  assert.ok(Deno.statSync(f).size < info.ram.transferred, "the stream was compressed");
  await using dst = await restore(`exec:gunzip -c ${f}`, "64M", "--allow-exec");
  await incomingCompleted(dst);
  await assertSameRam(src, dst);
});

Deno.test("e2e fd: a pipe between two ferries set up by a shell (3>&1 | 3<&0)", async () => {
  await using sh = await FerryShell.start(
    (f) =>
      `${f.ferry("a", ["--ram", "64M", "--fill", "random", "--paused"])} 3>&1 ${f.logs("a")} | ` +
      `${f.ferry("b", ["--ram", "64M", "--incoming", "fd:3", "--no-autostart"])} 3<&0 ${
        f.logs("b")
      }`,
    ["a", "b"],
  );
  const src = sh.client("a");
  const dst = sh.client("b");
  assert.equal(dst.incoming, "fd:3", sh.output("b"));
  const info = await migrateTo(src, "fd:3");
  assert.equal(info.status, "completed", JSON.stringify(info));
  await incomingCompleted(dst);
  await assertSameRam(src, dst);
  // The descriptor was used up: a second migration to it is refused as bad-fd.
  await src.api("POST", "/vm/start");
  const again = await src.api("POST", "/migrations", { uri: "fd:3" });
  assert.equal(again.status, 400, JSON.stringify(again.body));
  assert.equal(again.body.error.code, "bad-fd");
});

Deno.test("e2e file: a snapshot without an offset restores byte for byte", async () => {
  await using dir = tempDir();
  const f = `${dir.path}/g0.ferry`;
  await using src = await FerryProcess.start(["--ram", "64M", "--fill", "random", "--paused"]);
  const info = await migrateTo(src, `file:${f}`);
  assert.equal(info.status, "completed", JSON.stringify(info));
  assert.deepEqual([...Deno.readDirSync(dir.path)].map((e) => e.name), ["g0.ferry"]);
  const bytes = Deno.readFileSync(f);
  assert.deepEqual([...bytes.subarray(0, 4)], QEVM);
  assert.ok(bytes.length >= info.ram.transferred, "the file holds the whole stream");
  await using dst = await restore(`file:${f}`, "64M");
  await incomingCompleted(dst);
  await assertSameRam(src, dst);
});

Deno.test("e2e file: with an offset the prefix is preserved and QEVM starts at the offset", async () => {
  await using dir = tempDir();
  const f = `${dir.path}/disk.img`;
  const offset = 1 << 20;
  const prefix = new Uint8Array(offset);
  for (let i = 0; i < prefix.length; i++) prefix[i] = (i * 7 + 3) & 0xff;
  Deno.writeFileSync(f, prefix);
  const uri = `file:${f},offset=${offset}`;
  await using src = await FerryProcess.start(["--ram", "32M", "--fill", "pattern", "--paused"]);
  const info = await migrateTo(src, uri);
  assert.equal(info.status, "completed", JSON.stringify(info));
  const bytes = Deno.readFileSync(f);
  assert.deepEqual(bytes.subarray(0, offset), prefix, "bytes before the offset are untouched");
  assert.deepEqual([...bytes.subarray(offset, offset + 4)], QEVM, "QEVM starts at the offset");
  await using dst = await restore(uri, "32M");
  await incomingCompleted(dst);
  await assertSameRam(src, dst);
});

Deno.test("e2e file: snapshot of a running guest, restored by a new ferry that resumes it", async () => {
  await using dir = tempDir();
  const f = `${dir.path}/g1.ferry`;
  await using src = await FerryProcess.start([
    "--ram",
    "64M",
    "--fill",
    "random",
    "--workload",
    "random:rate=20M",
  ]);
  await src.waitFor("/vm", (b) => b.run_state === "running" && b.ops > 0);
  const info = await migrateTo(src, `file:${f}`);
  assert.equal(info.status, "completed", JSON.stringify(info));
  await using dst = await restore(`file:${f}`, "64M");
  await incomingCompleted(dst);
  await assertSameRam(src, dst);
  const before = (await dst.api("GET", "/vm")).body;
  assert.match(before.workload, /^random/, "the workload travelled in the snapshot");
  assert.equal((await dst.api("POST", "/vm/start")).status, 200);
  await dst.waitFor("/vm", (b) => b.run_state === "running" && b.ops > before.ops);
});

Deno.test("e2e file: a truncated snapshot fails the restore; the ferry can be armed again", async () => {
  await using dir = tempDir();
  const f = `${dir.path}/g.ferry`;
  await using src = await FerryProcess.start(["--ram", "16M", "--fill", "random", "--paused"]);
  assert.equal((await migrateTo(src, `file:${f}`)).status, "completed");
  const whole = Deno.readFileSync(f);
  Deno.writeFileSync(`${dir.path}/cut.ferry`, whole.subarray(0, 5 << 20));
  await using dst = await FerryProcess.start([
    "--ram",
    "16M",
    "--incoming",
    `file:${dir.path}/cut.ferry`,
    "--no-autostart",
  ]);
  const failed = await dst.waitFor("/migrations/incoming", (b) => b.status === "failed");
  assert.match(failed.error_desc, /truncated/);
  assert.equal((await dst.api("POST", "/vm/start")).status, 409, "a partial guest cannot start");
  const again = await dst.api("POST", "/migrations/incoming", { uri: `file:${f}` });
  assert.equal(again.status, 202, JSON.stringify(again.body));
  await incomingCompleted(dst);
  assert.equal(
    (await dst.api("GET", "/vm/ram/digest")).body.sha256,
    (await src.api("GET", "/vm/ram/digest")).body.sha256,
  );
});

Deno.test("e2e file: a missing snapshot is refused at arm time and by --incoming", async () => {
  await using dir = tempDir();
  const missing = `${dir.path}/nope.ferry`;
  await using f = await FerryProcess.start(["--ram", "8M", "--paused"]);
  const r = await f.api("POST", "/migrations/incoming", { uri: `file:${missing}` });
  assert.equal(r.status, 409);
  assert.equal(r.body.error.code, "listen-failed");
  assert.match(r.body.error.message, /no such file/);
  assert.equal(
    (await f.api("GET", "/vm")).body.run_state,
    "prelaunch",
    "the guest was not touched",
  );
  const out = await runMain(["--ram", "8M", "--incoming", `file:${missing}`]);
  assert.equal(out.code, 1);
  assert.equal(out.stderr.trim().split("\n").length, 1);
  assert.match(out.stderr, /nope\.ferry: no such file/);
});

Deno.test("e2e exec: a failing command fails the migration with its status and stderr; the guest runs on", async () => {
  await using src = await FerryProcess.start([
    "--ram",
    "32M",
    "--fill",
    "random",
    "--workload",
    "random:rate=1M",
    "--allow-exec",
  ]);
  const info = await migrateTo(src, "exec:cat > /nonexistent/dir/x");
  assert.equal(info.status, "failed");
  assert.match(info.error_desc, /exited with status 2/);
  assert.match(info.error_desc, /nonexistent\/dir\/x/);
  const vm = (await src.api("GET", "/vm")).body;
  assert.equal(vm.run_state, "running");
  await src.waitFor("/vm", (b) => b.ops > vm.ops);

  const exit3 = await migrateTo(src, "exec:echo 'no space left' >&2; exit 3");
  assert.equal(exit3.status, "failed");
  assert.match(exit3.error_desc, /exited with status 3.*stderr: no space left/);
  assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
});

Deno.test("e2e exec: a failing incoming command fails the destination with its status and stderr", async () => {
  await using dir = tempDir();
  const f = `${dir.path}/not-gzip`;
  Deno.writeFileSync(f, new TextEncoder().encode("plain text"));
  await using dst = await FerryProcess.start([
    "--ram",
    "16M",
    "--incoming",
    `exec:gunzip -c ${f}`,
    "--no-autostart",
    "--allow-exec",
  ]);
  const failed = await dst.waitFor("/migrations/incoming", (b) => b.status === "failed");
  assert.match(failed.error_desc, /exited with status 1.*not in gzip format/);
  assert.equal((await dst.api("GET", "/vm")).body.run_state, "inmigrate");
});

Deno.test("e2e exec: refused without --allow-exec (403 on both endpoints, and --incoming)", async () => {
  await using f = await FerryProcess.start(["--ram", "8M", "--paused"]);
  const out = await f.api("POST", "/migrations", { uri: "exec:cat > /dev/null" });
  assert.equal(out.status, 403);
  assert.equal(out.body.error.code, "exec-disabled");
  assert.match(out.body.error.message, /--allow-exec/);
  const inc = await f.api("POST", "/migrations/incoming", { uri: "exec:cat /dev/null" });
  assert.equal(inc.status, 403);
  assert.equal(inc.body.error.code, "exec-disabled");
  assert.equal((await f.api("GET", "/migrations/current")).body.status, "none");
  const main = await runMain(["--ram", "8M", "--incoming", "exec:cat /dev/null"]);
  assert.notEqual(main.code, 0);
  assert.equal(main.stderr.trim().split("\n").length, 1, main.stderr);
  assert.match(main.stderr, /--allow-exec/);
});

Deno.test("e2e exec: cancelling a migration into a command that never reads kills and reaps it", async () => {
  // The command would sleep for ten minutes: a cancel that waited for it could not pass.
  const tag = `600.${crypto.getRandomValues(new Uint32Array(1))[0]}`;
  await using src = await FerryProcess.start([
    "--ram",
    "64M",
    "--fill",
    "random",
    "--workload",
    "random:rate=1M",
    "--allow-exec",
  ]);
  await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED });
  // `; true` keeps sh as sleep's parent, so the kill must reach the whole group.
  const started = await src.api("POST", "/migrations", { uri: `exec:sleep ${tag}; true` });
  assert.equal(started.status, 202);
  await src.waitFor("/migrations/current", (b) => b.status === "active");
  let pids: number[] = [];
  await waitUntil(() => (pids = processesMatching(`sleep ${tag}`)).length >= 2, "sh and sleep");
  assert.equal(pids.length, 2, "sh and sleep are running");
  assert.equal((await src.api("DELETE", "/migrations/current")).status, 202);
  const info = await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status));
  assert.equal(info.status, "cancelled");
  await waitGone(pids); // neither running, nor a zombie
  assert.deepEqual(processesMatching(`sleep ${tag}`), []);
  assert.equal((await src.api("GET", "/vm")).body.run_state, "running");
});

Deno.test("e2e fd: a descriptor ferry was not given answers 400 bad-fd naming it", async () => {
  await using f = await FerryProcess.start(["--ram", "8M", "--paused"]);
  const out = await f.api("POST", "/migrations", { uri: "fd:987" });
  assert.equal(out.status, 400);
  assert.equal(out.body.error.code, "bad-fd");
  assert.match(out.body.error.message, /fd:987/);
  const inc = await f.api("POST", "/migrations/incoming", { uri: "fd:0" });
  assert.equal(inc.status, 400);
  assert.equal(inc.body.error.code, "bad-fd");
  assert.equal((await f.api("GET", "/vm")).body.run_state, "prelaunch");
});

async function runMain(args: string[]): Promise<{ code: number; stderr: string }> {
  const main = new URL("../../main.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "--listen", "127.0.0.1:0", ...args],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}
