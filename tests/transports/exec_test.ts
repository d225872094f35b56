import assert from "node:assert/strict";
import { connectExec, listenExec } from "../../transports/exec.ts";
import { createTransports } from "../../transports/mod.ts";
import {
  assertRejectsMatching,
  assertTransportError,
  pattern,
  readAll,
  readExactly,
  settlesWithin,
  writeAll,
  writeAllAndFinish,
} from "./_helpers.ts";
import { groupMembers, procStat, waitGone } from "./_processes.ts";
import { waitUntil } from "../helpers/wait.ts";

/** A fresh temporary directory removed when the test's `using` scope ends. */
function tempDir(): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix: "ferry-exec-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}

/** Waits until the channel's command is reaped and nothing of its process group is left. */
async function assertReaped(ch: { pid: number; stopped(): Promise<void> }): Promise<void> {
  await ch.stopped();
  await waitGone([ch.pid]);
  const deadline = Date.now() + 5000;
  while (groupMembers(ch.pid).length > 0) {
    if (Date.now() > deadline) {
      throw new Error(`group ${ch.pid} still has ${JSON.stringify(groupMembers(ch.pid))}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test("exec: the outgoing stream reaches the command's stdin; finish waits for exit 0", async () => {
  using dir = tempDir();
  const out = `${dir.path}/out.bin`;
  const ch = await connectExec(`exec:cat > ${out}`);
  assert.equal(ch.peer, `exec:cat > ${out}`);
  const data = pattern(3 << 20, 7);
  await writeAllAndFinish(ch, data);
  assert.equal(ch.closed, true);
  assert.deepEqual(Deno.readFileSync(out), data);
  await assertReaped(ch);
});

Deno.test("exec: an incoming listener runs the command once and reads its stdout to EOF", async () => {
  using dir = tempDir();
  const src = `${dir.path}/in.bin`;
  const data = pattern(5 << 20, 9);
  Deno.writeFileSync(src, data);
  using listener = await listenExec(`exec:cat ${src}`);
  assert.equal(listener.address, `exec:cat ${src}`);
  const ch = await listener.accept();
  await assertRejectsMatching(listener.accept(), /already ran/);
  assert.deepEqual(await readAll(ch), data);
  assert.equal(await ch.read(new Uint8Array(8)), null, "EOF stays EOF");
  ch.close();
  await assertReaped(ch);
});

Deno.test("exec: a compressing pipeline round-trips (gzip -c > F, gunzip -c F)", async () => {
  using dir = tempDir();
  const gz = `${dir.path}/s.gz`;
  const data = pattern(2 << 20, 3);
  const out = await connectExec(`exec:gzip -c > ${gz}`);
  await writeAllAndFinish(out, data);
  await assertReaped(out);
  assert.ok(Deno.statSync(gz).size > 0);
  using listener = await listenExec(`exec:gunzip -c ${gz}`);
  const inc = await listener.accept();
  assert.deepEqual(await readAll(inc), data);
  inc.close();
  await assertReaped(inc);
});

Deno.test("exec: a command exiting non-zero fails finish() with its status and stderr tail", async () => {
  const ch = await connectExec(
    "exec:cat > /dev/null; for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3",
  );
  await ch.write(pattern(1000));
  const err = await assertRejectsMatching(ch.finish(), /exited with status 3/);
  assert.match(err.message, /line3 \| line4 \| line5 \| line6 \| line7/);
  assert.doesNotMatch(err.message, /line2/, "only the last five lines");
  assert.match(err.message, /^The command exec:cat > \/dev\/null/);
  assert.equal(ch.closed, true);
  await assertReaped(ch);
});

Deno.test("exec: the stderr tail quoted in an error is at most 1 KiB", async () => {
  const ch = await connectExec(
    "exec:cat >/dev/null; head -c 5000 /dev/zero | tr '\\0' x >&2; exit 1",
  );
  const err = await assertRejectsMatching(writeAllAndFinish(ch, pattern(10)), /status 1/);
  const tail = err.message.slice(err.message.indexOf("stderr: ") + 8);
  assert.ok(tail.length <= 1024, `tail is ${tail.length} chars`);
  assert.match(tail, /^…x+$/);
  await assertReaped(ch);
});

Deno.test("exec: a command that exits without reading fails the write with status and stderr", async () => {
  const ch = await connectExec("exec:echo 'cannot create /nonexistent/dir/x' >&2; exit 2");
  const err = await assertRejectsMatching(
    writeAll(ch, pattern(8 << 20)),
    /exited with status 2 before reading the whole stream/,
  );
  assert.match(err.message, /cannot create \/nonexistent\/dir\/x/);
  assert.equal(ch.closed, true);
  await assertRejectsMatching(ch.finish(), /status 2/);
  await assertReaped(ch);
});

Deno.test("exec: a redirection into a missing directory is reported by the shell", async () => {
  const ch = await connectExec("exec:cat > /nonexistent/dir/x");
  const err = await assertRejectsMatching(
    writeAllAndFinish(ch, pattern(4 << 20)),
    /exited with status [12]/,
  );
  assert.match(err.message, /nonexistent/);
  await assertReaped(ch);
});

Deno.test("exec: a command that closes its stdin but keeps running fails the write", async () => {
  const ch = await connectExec("exec:exec 0<&-; sleep 30");
  const err = await assertRejectsMatching(
    writeAll(ch, pattern(8 << 20)),
    /closed its input before reading the whole stream/,
  );
  assert.match(err.message, /exec:exec 0<&-; sleep 30/);
  await assertReaped(ch);
});

Deno.test("exec: close() while a write is blocked rejects it at once and kills the whole group", async () => {
  // `; true` keeps sh alive as the parent of sleep: two processes in the group.
  const ch = await connectExec("exec:sleep 60; true");
  const write = writeAll(ch, pattern(4 << 20));
  await waitUntil(() => groupMembers(ch.pid).length >= 2, "sh starting sleep");
  assert.equal(await settlesWithin(write, 50), false, "the write is blocked: nobody reads");
  assert.equal(procStat(ch.pid)?.pgrp, ch.pid, "the shell leads its own process group");
  const members = groupMembers(ch.pid);
  assert.ok(members.length >= 2, `sh and sleep run: ${JSON.stringify(members)}`);
  ch.close();
  // Rejected within the same turn: close() waits for no process, pipe or timer.
  assert.equal(await settlesWithin(write, 0), true, "the write rejected at once");
  await assertRejectsMatching(write, /closed/);
  await assertReaped(ch);
  await waitGone(members.map((m) => m.pid));
});

Deno.test("exec: spawned with Deno's detached mode (no setsid), it also runs in its own group", async () => {
  using dir = tempDir();
  const f = `${dir.path}/d.bin`;
  const out = await connectExec(`exec:cat > ${f}`, undefined, { session: "detached" });
  assert.equal(procStat(out.pid)?.pgrp, out.pid);
  await writeAllAndFinish(out, pattern(200_000));
  await assertReaped(out);
  using listener = await listenExec(`exec:cat ${f}; sleep 60`, { session: "detached" });
  const inc = await listener.accept();
  assert.deepEqual(await readExactly(inc, 200_000), pattern(200_000));
  const members = groupMembers(inc.pid);
  inc.close();
  await assertReaped(inc);
  await waitGone(members.map((m) => m.pid));
});

Deno.test("exec: a command ignoring SIGTERM is SIGKILLed after the grace period", async () => {
  const ch = await connectExec("exec:trap '' TERM; sleep 60; true", undefined, {
    killGraceMs: 200,
  });
  // sh has set its trap once it started sleep.
  await waitUntil(() => groupMembers(ch.pid).length >= 2, "sh starting sleep");
  const members = groupMembers(ch.pid);
  const t = performance.now();
  ch.close();
  await assertReaped(ch);
  assert.ok(performance.now() - t < 3000);
  await waitGone(members.map((m) => m.pid));
});

Deno.test("exec: the incoming side fails at EOF with the exit status and stderr tail", async () => {
  using listener = await listenExec(
    "exec:printf QEVM; echo 'gzip: F: not in gzip format' >&2; exit 5",
  );
  const ch = await listener.accept();
  const buf = new Uint8Array(16);
  const n = await ch.read(buf);
  assert.equal(new TextDecoder().decode(buf.subarray(0, n ?? 0)), "QEVM");
  const err = await assertRejectsMatching(ch.read(buf), /exited with status 5/);
  assert.match(err.message, /not in gzip format/);
  assert.equal(ch.closed, true);
  await assertReaped(ch);
});

Deno.test("exec: closing the incoming side kills a command that never writes", async () => {
  using listener = await listenExec("exec:sleep 60");
  const ch = await listener.accept();
  const read = ch.read(new Uint8Array(16));
  await new Promise((r) => setTimeout(r, 100));
  ch.close();
  await assertRejectsMatching(read, /closed/);
  await assertReaped(ch);
});

Deno.test("exec: a closed listener refuses to accept", async () => {
  const listener = await listenExec("exec:true");
  listener.close();
  await assertRejectsMatching(listener.accept(), /closed/);
});

Deno.test("exec: an aborted signal stops connect before anything runs", async () => {
  const abort = new AbortController();
  abort.abort(new Error("stop"));
  await assertRejectsMatching(connectExec("exec:true", abort.signal), /stop/);
});

Deno.test("createTransports({ allowExec: true }) runs exec: both ways", async () => {
  using dir = tempDir();
  const f = `${dir.path}/t.bin`;
  const transports = createTransports({ allowExec: true });
  transports.validate(`exec:cat > ${f}`);
  const out = await transports.connect(`exec:cat > ${f}`);
  await writeAllAndFinish(out, pattern(100_000));
  using listener = await transports.listen(`exec:cat ${f}`);
  assert.equal(listener.address, `exec:cat ${f}`);
  const inc = await listener.accept();
  assert.deepEqual(await readAll(inc), pattern(100_000));
  inc.close();
  await (out as unknown as { stopped(): Promise<void> }).stopped();
  await (inc as unknown as { stopped(): Promise<void> }).stopped();
});

Deno.test("createTransports() without allowExec refuses exec: naming --allow-exec", async () => {
  const transports = createTransports();
  await assertTransportError(
    () => transports.validate("exec:cat"),
    "exec-disabled",
    "--allow-exec",
  );
  await assertTransportError(() => transports.connect("exec:cat"), "exec-disabled");
  await assertTransportError(() => transports.listen("exec:cat"), "exec-disabled");
});
