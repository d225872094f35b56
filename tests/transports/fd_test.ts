import assert from "node:assert/strict";
import { inspectFd } from "../../transports/fd.ts";
import { createTransports } from "../../transports/mod.ts";
import { assertTransportError, pattern } from "./_helpers.ts";

const child = new URL("./_fd_child.ts", import.meta.url).pathname;
const deno = Deno.execPath();

/** `deno run -A _fd_child.ts ARGS`, quoted for sh. */
function run(...args: string[]): string {
  return [deno, "run", "-A", child, ...args].map(quote).join(" ");
}

function quote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

interface Report {
  op: string;
  ok: boolean;
  code?: string;
  message?: string;
  length?: number;
  sha256?: string;
  closed?: boolean;
  exiting?: boolean;
  at: number;
}

/** Runs `script` with bash; returns the exit code and every JSON report the children printed. */
async function shell(script: string): Promise<{ code: number; reports: Report[]; stderr: string }> {
  const out = await new Deno.Command("bash", {
    args: ["-c", script],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  const reports = stderr.split("\n").filter((l) => l.startsWith("{")).map((l) =>
    JSON.parse(l) as Report
  );
  return { code: out.code, reports, stderr };
}

async function sha256(data: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", data.slice()));
  return Array.from(d, (x) => x.toString(16).padStart(2, "0")).join("");
}

function tempDir(): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix: "ferry-fd-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}

Deno.test("fd: a pipe between two processes carries the stream (3>&1 | 3<&0)", async () => {
  const size = 6 << 20;
  const r = await shell(
    `${run("send", "fd:3", String(size), "5")} 3>&1 >/dev/null | ${run("recv", "fd:3")} 3<&0`,
  );
  assert.equal(r.code, 0, r.stderr);
  const recv = r.reports.find((x) => x.op === "recv");
  assert.equal(recv?.length, size, r.stderr);
  assert.equal(recv?.sha256, await sha256(pattern(size, 5)));
  assert.ok(r.reports.find((x) => x.op === "send")?.ok);
});

Deno.test("fd: a named pipe (mkfifo) carries the stream between two processes", async () => {
  using dir = tempDir();
  const fifo = `${dir.path}/m.fifo`;
  const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output();
  assert.ok(mk.success);
  const size = 3 << 20;
  const r = await shell(
    `${run("recv", "fd:3")} 3<${quote(fifo)} & ${run("send", "fd:3", String(size), "8")} 3>${
      quote(fifo)
    }; wait`,
  );
  assert.equal(r.code, 0, r.stderr);
  const recv = r.reports.find((x) => x.op === "recv");
  assert.equal(recv?.sha256, await sha256(pattern(size, 8)), r.stderr);
});

Deno.test("fd: a redirected file is written (3>F) and read back (3<F)", async () => {
  using dir = tempDir();
  const f = `${dir.path}/snap.bin`;
  const w = await shell(`${run("send", "fd:3", "300000", "2")} 3>${quote(f)}`);
  assert.equal(w.code, 0, w.stderr);
  assert.deepEqual(Deno.readFileSync(f), pattern(300000, 2));
  const r = await shell(`${run("recv", "fd:3")} 3<${quote(f)}`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.reports[0].sha256, await sha256(pattern(300000, 2)));
});

Deno.test("fd: a file descriptor is used from its current position, and in append mode", async () => {
  using dir = tempDir();
  const f = `${dir.path}/snap.bin`;
  // The shell writes a header through fd 3 first: the stream must follow it.
  const w = await shell(`exec 3>${quote(f)}; printf HDR >&3; ${run("send", "fd:3", "5000", "1")}`);
  assert.equal(w.code, 0, w.stderr);
  const got = Deno.readFileSync(f);
  assert.equal(new TextDecoder().decode(got.subarray(0, 3)), "HDR");
  assert.deepEqual(got.subarray(3), pattern(5000, 1));
  const a = await shell(`${run("send", "fd:3", "10", "2")} 3>>${quote(f)}`);
  assert.equal(a.code, 0, a.stderr);
  assert.deepEqual(Deno.readFileSync(f).subarray(5003), pattern(10, 2));
  // Reading skips what the shell already consumed.
  const r = await shell(`exec 3<${quote(f)}; head -c 3 <&3 >/dev/null; ${run("recv", "fd:3")}`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.reports[0].length, 5010);
});

Deno.test("fd: closing an unfinished stream closes the pipe at once (the reader sees EOF)", async () => {
  const r = await shell(
    `${run("abandon", "fd:3", "100000", "3000")} 3>&1 >/dev/null | ${run("recv", "fd:3")} 3<&0`,
  );
  const closed = r.reports.find((x) => x.closed);
  const recv = r.reports.find((x) => x.op === "recv");
  const exiting = r.reports.find((x) => x.exiting);
  assert.ok(closed && recv && exiting, r.stderr);
  assert.equal(recv.length, 100000);
  assert.ok(recv.at < exiting.at - 1000, "EOF came long before the writer exited");
});

Deno.test("fd: a socket descriptor works both ways (bash /dev/tcp)", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  const size = 3 << 20;
  // Outgoing: the child writes fd 3, a TCP connection to this test.
  const sending = shell(
    `exec 3<>/dev/tcp/127.0.0.1/${port}; ${run("send", "fd:3", String(size), "4")}`,
  );
  {
    using conn = await listener.accept();
    const got = new Uint8Array(await new Response(conn.readable).arrayBuffer());
    assert.deepEqual(got, pattern(size, 4));
  }
  const s = await sending;
  assert.equal(s.code, 0, s.stderr);
  // Incoming: the child reads fd 3 until this test shuts its side down.
  const receiving = shell(`exec 3<>/dev/tcp/127.0.0.1/${port}; ${run("recv", "fd:3")}`);
  const conn = await listener.accept();
  const writer = conn.writable.getWriter();
  await writer.write(pattern(size, 6));
  await conn.closeWrite();
  const r = await receiving;
  conn.close();
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.reports[0].sha256, await sha256(pattern(size, 6)));
});

Deno.test("fd: the direction must match how the descriptor was opened", async () => {
  using dir = tempDir();
  const f = `${dir.path}/x`;
  Deno.writeFileSync(f, pattern(10));
  const w = await shell(`${run("send", "fd:3", "10", "1")} 3<${quote(f)}`);
  assert.equal(w.code, 1);
  assert.equal(w.reports[0].code, "bad-fd");
  assert.match(w.reports[0].message ?? "", /fd:3.*read-only/);
  const r = await shell(`${run("recv", "fd:3")} 3>>${quote(f)}`);
  assert.equal(r.code, 1);
  assert.equal(r.reports[0].code, "bad-fd");
  assert.match(r.reports[0].message ?? "", /write-only/);
});

Deno.test("fd: validate() accepts an inherited descriptor and refuses one that is not open", async () => {
  const ok = await shell(`${run("validate", "fd:5")} 5</dev/null`);
  assert.equal(ok.code, 0, ok.stderr);
  const missing = await shell(run("validate", "fd:4000"));
  assert.equal(missing.reports[0].code, "bad-fd", missing.stderr);
  assert.match(missing.reports[0].message ?? "", /fd:4000.*not open/);
  // Nothing inherited on 3: whatever Deno itself opened there is refused.
  const own = await shell(run("validate", "fd:3"));
  assert.equal(own.reports[0].code, "bad-fd", own.stderr);
  assert.match(own.reports[0].message ?? "", /fd:3.*not inherited/);
});

Deno.test("fd: without --allow-all the answer says that fd: needs it", async () => {
  const args = [deno, "run", "--allow-read", "--allow-write", "--allow-run", child];
  const r = await shell(`${[...args, "validate", "fd:3"].map(quote).join(" ")} 3</dev/null`);
  assert.equal(r.code, 1);
  assert.equal(r.reports[0].code, "transport-unavailable", r.stderr);
  assert.match(r.reports[0].message ?? "", /fd: needs ferry to run with --allow-all/);
});

Deno.test("inspectFd() refuses ferry's console and Deno's own descriptors", async () => {
  for (const fd of [0, 1, 2]) {
    await assertTransportError(() => inspectFd(fd), "bad-fd", `fd:${fd}`, "3 or above");
  }
  // Descriptors this test process opened itself are close-on-exec: not inherited.
  const path = new URL(import.meta.url).pathname;
  using _file = await Deno.open(path);
  const own = [...Deno.readDirSync("/proc/self/fd")].map((e) => Number(e.name)).filter((fd) => {
    try {
      return fd > 2 && Deno.readLinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false; // closed meanwhile (e.g. the directory listing's own descriptor)
    }
  });
  assert.ok(own.length > 0);
  await assertTransportError(() => inspectFd(own[0]), "bad-fd", "not inherited");
  await assertTransportError(() => inspectFd(987654), "bad-fd", "fd:987654", "not open");
});

Deno.test("createTransports() answers bad-fd from validate, connect and listen", async () => {
  const transports = createTransports();
  await assertTransportError(() => transports.validate("fd:987654"), "bad-fd", "fd:987654");
  await assertTransportError(() => transports.connect("fd:987654"), "bad-fd");
  await assertTransportError(() => transports.listen("fd:1"), "bad-fd");
});
