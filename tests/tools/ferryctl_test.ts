import assert from "node:assert/strict";
import { generateToken } from "../../api_token.ts";
import { FerryProcess } from "../../testing/ferry_process.ts";
import {
  FerryApi,
  type Io,
  parseDuration,
  progressLine,
  resolveToken,
  run,
  summaryTable,
  tokenFileFor,
  UsageError,
} from "../../tools/ferryctl.ts";
import { waitUntil } from "../helpers/wait.ts";

/** Captures what the CLI prints. */
function capture(tty = false): Io & { stdout: string; stderr: string } {
  const io = {
    stdout: "",
    stderr: "",
    tty,
    out(text: string) {
      io.stdout += text;
    },
    err(text: string) {
      io.stderr += text;
    },
  };
  return io;
}

/** Two ferries sharing one API token (`env` gives it to the CLI as FERRY_TOKEN). */
async function pair(extraSrc: string[] = []) {
  const token = generateToken();
  const dst = await FerryProcess.destination("16M", "tcp:127.0.0.1:0", [], { token });
  const src = await FerryProcess.start(
    [
      "--ram",
      "16M",
      "--fill",
      "random",
      "--workload",
      "random:rate=2M",
      ...extraSrc,
    ],
    {},
    { token },
  );
  return {
    src,
    dst,
    to: dst.incoming,
    env: { FERRY_TOKEN: token },
    async [Symbol.asyncDispose]() {
      await src[Symbol.asyncDispose]();
      await dst[Symbol.asyncDispose]();
    },
  };
}

Deno.test("parseDuration reads ms, s and min; a bare number is ms", () => {
  assert.equal(parseDuration("30"), 30);
  assert.equal(parseDuration("30ms"), 30);
  assert.equal(parseDuration("0.5s"), 500);
  assert.equal(parseDuration("2min"), 120_000);
  for (const bad of ["", "fast", "-1ms", "0", "1h"]) {
    assert.throws(() => parseDuration(bad), UsageError, bad);
  }
});

Deno.test("progressLine shows the bar, bytes sent, remaining, throughput, ETA and pass", () => {
  const info = {
    status: "active",
    ram: {
      transferred: 8 << 20,
      remaining: 4 << 20,
      total: 16 << 20,
      mbps: 33.554432, // 4 MiB/s
      dirty_sync_count: 2,
    },
  };
  const line = progressLine(info, 0.75, 20);
  assert.equal(
    line,
    "[###############-----]  75.0%  8.0 MiB sent  4.0 MiB remaining  4.0 MiB/s  ETA 1.00 s  pass 2",
  );
});

Deno.test("summaryTable lists times, bytes and pages, and xbzrle and throttle when present", () => {
  const table = summaryTable(
    {
      status: "completed",
      uri: "tcp:h:1",
      total_time: 2100,
      setup_time: 4,
      downtime: 12.5,
      cpu_throttle_percentage: 30,
      ram: {
        transferred: 1 << 20,
        remaining: 0,
        total: 1 << 20,
        duplicate: 10,
        normal: 246,
        normal_bytes: 246 * 4096,
        mbps: 8,
        dirty_sync_count: 3,
        dirty_pages_rate: 100,
      },
      xbzrle_cache: {
        cache_size: 64 << 20,
        bytes: 1234,
        pages: 5,
        cache_miss: 2,
        cache_miss_rate: 0.25,
        overflow: 1,
      },
    },
    { downtime_limit: 30 },
  );
  for (
    const row of [
      /\| status +\| completed +\|/,
      /\| downtime +\| 12\.5 ms \(limit 30 ms\) +\|/,
      /\| total time +\| 2\.10 s +\|/,
      /\| transferred +\| 1\.0 MiB +\|/,
      /\| zero pages +\| 10 +\|/,
      /\| dirty syncs +\| 3 +\|/,
      /\| cpu throttle +\| 30 % +\|/,
      /\| xbzrle cache +\| 64\.0 MiB +\|/,
      /\| xbzrle misses +\| 2 \(25\.0 %\), 1 overflows +\|/,
    ]
  ) assert.match(table, row);
  const widths = new Set(table.split("\n").map((l) => l.length));
  assert.equal(widths.size, 1, "every row has the same width");
});

Deno.test("FerryApi refuses a --api that is not an http URL", () => {
  assert.throws(() => new FerryApi("127.0.0.1:8080"), UsageError);
  assert.throws(() => new FerryApi("ftp://x"), UsageError);
  assert.equal(new FerryApi("http://127.0.0.1:8080/").base, "http://127.0.0.1:8080");
});

Deno.test("usage errors exit 2 with one line", async () => {
  for (
    const argv of [
      ["migrate", "--api", "http://127.0.0.1:9"],
      ["migrate", "--to", "tcp:h:1", "--speed", "fast"],
      ["migrate", "--to", "tcp:h:1", "--downtime", "soon"],
      ["migrate", "--to", "tcp:h:1", "--bogus"],
      ["status", "--api", "not a url"],
      ["frobnicate"],
      [],
    ]
  ) {
    const io = capture();
    assert.equal(await run(argv, {}, io), 2, argv.join(" "));
    assert.equal(io.stderr.trim().split("\n").length, 1, io.stderr);
    assert.equal(io.stdout, "");
  }
  const help = capture();
  assert.equal(await run(["migrate", "--", "--help"], {}, help), 0);
  assert.match(help.stdout, /--downtime TIME/);
});

Deno.test("migrate --watch against real ferries: progress lines, summary table, exit 0 on completed", async () => {
  await using p = await pair();
  const io = capture();
  const code = await run(
    [
      "migrate",
      "--",
      "--api",
      p.src.url,
      "--to",
      p.to,
      "--speed",
      "16M",
      "--downtime",
      "300ms",
      "--watch",
    ],
    p.env,
    io,
  );
  assert.equal(code, 0, io.stdout + io.stderr);
  assert.equal(io.stderr, "");
  assert.match(io.stdout, /max 16\.0 MiB\/s, downtime limit 300 ms/);
  assert.match(io.stdout, /ferry: migration setup → active/);
  assert.match(io.stdout, /ferry: migration active → completed/);
  assert.match(io.stdout, /\[#+\] 100\.0% .* sent .* remaining .*\/s {2}ETA .* pass \d+/);
  assert.match(io.stdout, /\| status +\| completed +\|/);
  assert.match(io.stdout, /\| downtime +\| [\d.]+ ms \(limit 300 ms\) +\|/);
  assert.match(io.stdout, /\| total RAM +\| 16\.0 MiB +\|/);
  const params = await p.src.api("GET", "/migrations/parameters");
  assert.equal(params.body.max_bandwidth, 16 << 20);
  assert.equal(params.body.downtime_limit, 300);

  // The guest arrived byte for byte.
  await p.dst.waitFor("/migrations/incoming", (b) => b.status === "completed");
  const a = await p.src.api("GET", "/vm/ram/digest");
  const b = await p.dst.api("GET", "/vm/ram/digest");
  assert.equal(a.body.sha256, b.body.sha256);

  // status prints the finished migration.
  const st = capture();
  assert.equal(await run(["status", "--api", p.src.url], p.env, st), 0);
  assert.match(st.stdout, /\| status +\| completed +\|/);
  const json = capture();
  assert.equal(await run(["status", "--api", p.src.url, "--json"], p.env, json), 0);
  assert.equal(JSON.parse(json.stdout).status, "completed");
  const inc = capture();
  assert.equal(await run(["status", "--api", p.dst.url], p.env, inc), 0);
  assert.match(inc.stdout, /\| status +\| none +\|/);
  assert.match(inc.stdout, /incoming: completed, on tcp:127\.0\.0\.1:\d+, [\d.]+ MiB received/);
});

Deno.test("migrate to a port nobody listens on exits 1 with the failure in the summary", async () => {
  await using src = await FerryProcess.start(["--ram", "8M"]);
  const io = capture();
  const code = await run(
    ["migrate", "--api", src.url, "--to", "tcp:127.0.0.1:9"],
    { FERRY_TOKEN: src.token },
    io,
  );
  assert.equal(code, 1);
  assert.match(io.stdout, /ferry: migration setup → failed: /);
  assert.match(io.stdout, /\| status +\| failed +\|/);
  assert.match(io.stdout, /\| error +\| Cannot connect to tcp:127\.0\.0\.1:9/);
});

Deno.test("migrate exits 1 when the migration is cancelled meanwhile; status --watch follows it", async () => {
  await using p = await pair();
  const io = capture();
  const running = run(["migrate", "--api", p.src.url, "--to", p.to, "--speed", "1M"], p.env, io);
  await p.src.waitFor("/migrations/current", (b) => b.status === "active");
  const watcher = capture();
  const watching = run(["status", "--api", p.src.url, "--watch"], p.env, watcher);
  const bar = /\[#*-+\] +\d+\.\d% /;
  await waitUntil(() => bar.test(watcher.stdout), "status --watch drawing progress");
  assert.equal((await p.src.api("DELETE", "/migrations/current")).status, 202);
  assert.equal(await running, 1);
  assert.match(io.stdout, /ferry: migration active → cancelling/);
  assert.match(io.stdout, /\| status +\| cancelled +\|/);
  assert.equal(await watching, 0, "status reports, whatever the outcome");
  assert.match(watcher.stdout, bar, "status --watch drew progress");
  assert.match(watcher.stdout, /\| status +\| cancelled +\|/);
});

Deno.test("migrate --timeout gives up with exit 1 and leaves the migration running", async () => {
  await using p = await pair();
  const io = capture();
  const code = await run(
    ["migrate", "--api", p.src.url, "--to", p.to, "--speed", "1M", "--timeout", "600ms"],
    p.env,
    io,
  );
  assert.equal(code, 1);
  assert.match(io.stderr, /timed out: the migration is still active/);
  assert.equal((await p.src.api("GET", "/migrations/current")).body.status, "active");
  await p.src.api("DELETE", "/migrations/current");
});

Deno.test("migrate --xbzrle either enables XBZRLE or reports why not, and exits non-zero then", async () => {
  await using p = await pair();
  const io = capture();
  const code = await run(["migrate", "--api", p.src.url, "--to", p.to, "--xbzrle"], p.env, io);
  const caps = await p.src.api("GET", "/migrations/capabilities");
  if (caps.body.xbzrle) {
    assert.equal(code, 0, io.stdout + io.stderr);
    assert.match(io.stdout, /\| status +\| completed +\|/);
    assert.match(io.stdout, /\| xbzrle cache +\|/);
  } else {
    // Not built yet: the API says so and the CLI passes it on, clearly.
    assert.equal(code, 1);
    assert.match(
      io.stderr,
      /^ferry migrate: cannot enable xbzrle: PUT \/migrations\/capabilities answered 400 capability-unsupported: /,
    );
    assert.equal((await p.src.api("GET", "/migrations/current")).body.status, "none");
  }
});

Deno.test("FERRY_TOKEN is sent as a bearer token; without it the CLI says so", async () => {
  const secret = "tok-123-tok-123-tok";
  await using src = await FerryProcess.start(["--ram", "8M", "--token", secret]);
  const denied = capture();
  assert.equal(await run(["status", "--api", src.url], {}, denied), 1);
  assert.match(denied.stderr, /answered 401\b.*no token: pass --token, set FERRY_TOKEN/);
  const wrong = capture();
  assert.equal(
    await run(["status", "--api", src.url], { FERRY_TOKEN: "nope-nope-nope-nope" }, wrong),
    1,
  );
  assert.match(wrong.stderr, /the token from FERRY_TOKEN was refused/);
  const ok = capture();
  assert.equal(await run(["status", "--api", src.url], { FERRY_TOKEN: secret }, ok), 0);
  assert.match(ok.stdout, /\| status +\| none +\|/);
  // --token comes before FERRY_TOKEN.
  const flag = capture();
  assert.equal(
    await run(["status", "--api", src.url, "--token", secret], { FERRY_TOKEN: "nope" }, flag),
    0,
  );
  // migrate needs it for the event stream too.
  const mig = capture();
  const code = await run(
    ["migrate", "--api", src.url, "--to", "tcp:127.0.0.1:9"],
    { FERRY_TOKEN: secret },
    mig,
  );
  assert.equal(code, 1);
  assert.match(mig.stdout, /\| status +\| failed +\|/);
});

/** A ferry that generated its own token into a private XDG_RUNTIME_DIR. */
async function generatedTokenFerry() {
  const runtime = Deno.makeTempDirSync({ prefix: "ferry-xdg-" });
  const src = await FerryProcess.start(["--ram", "8M"], { XDG_RUNTIME_DIR: runtime }, {
    token: false,
  });
  return {
    src,
    runtime,
    async [Symbol.asyncDispose]() {
      await src[Symbol.asyncDispose]();
      Deno.removeSync(runtime, { recursive: true });
    },
  };
}

Deno.test("without --token or FERRY_TOKEN the CLI reads the token file of the ferry on that loopback port", async () => {
  await using f = await generatedTokenFerry();
  const port = new URL(f.src.url).port;
  const file = `${f.runtime}/ferry/api-${port}.token`;
  assert.equal(resolveToken(f.src.url, undefined, { XDG_RUNTIME_DIR: f.runtime }).source, file);
  const ok = capture();
  assert.equal(await run(["status", "--api", f.src.url], { XDG_RUNTIME_DIR: f.runtime }, ok), 0);
  assert.match(ok.stdout, /\| status +\| none +\|/);
  // localhost is the same machine; FERRY_TOKEN still wins over the file.
  const local = `http://localhost:${port}`;
  assert.equal(resolveToken(local, undefined, { XDG_RUNTIME_DIR: f.runtime }).token, f.src.token);
  // No file where it looked: the 401 says where that was.
  const other = capture();
  assert.equal(
    await run(["status", "--api", f.src.url], { XDG_RUNTIME_DIR: `${f.runtime}/elsewhere` }, other),
    1,
  );
  assert.match(other.stderr, /no token: .*ferry wrote .*elsewhere\/ferry\/api-\d+\.token/);
  const wrong = capture();
  const env = { XDG_RUNTIME_DIR: f.runtime, FERRY_TOKEN: "nope-nope-nope-nope" };
  assert.equal(await run(["status", "--api", f.src.url], env, wrong), 1);
  assert.match(wrong.stderr, /answered 401 .*the token from FERRY_TOKEN was refused/);
  // Locked out for a moment now; the right token still gets through at once.
  assert.equal(
    await run(["status", "--api", f.src.url], { XDG_RUNTIME_DIR: f.runtime }, capture()),
    0,
  );
});

Deno.test("the token file is only looked for when the API is on this machine", () => {
  const env = { XDG_RUNTIME_DIR: "/run/user/1000", HOME: "/home/a" };
  assert.equal(tokenFileFor("http://127.0.0.1:8080", env), "/run/user/1000/ferry/api-8080.token");
  assert.equal(tokenFileFor("http://[::1]:9", env), "/run/user/1000/ferry/api-9.token");
  assert.equal(tokenFileFor("http://localhost", env), "/run/user/1000/ferry/api-80.token");
  assert.equal(
    tokenFileFor("http://127.0.0.1:8080", { HOME: "/home/a" }),
    "/home/a/.local/state/ferry/api-8080.token",
  );
  assert.equal(tokenFileFor("http://10.0.0.5:8080", env), undefined);
  assert.equal(tokenFileFor("http://ferry.example:8080", env), undefined);
  assert.deepEqual(resolveToken("http://10.0.0.5:8080", undefined, env), {
    token: undefined,
    source: "",
  });
});

Deno.test("token prints the generated token; it fails clearly where there is none", async () => {
  await using f = await generatedTokenFerry();
  const io = capture();
  assert.equal(await run(["token", "--api", f.src.url], { XDG_RUNTIME_DIR: f.runtime }, io), 0);
  assert.equal(io.stdout, `${f.src.token}\n`);
  const none = capture();
  assert.equal(
    await run(["token", "--api", "http://127.0.0.1:9"], { XDG_RUNTIME_DIR: f.runtime }, none),
    1,
  );
  assert.match(none.stderr, /^ferry token: no token file .*api-9\.token/);
  const remote = capture();
  assert.equal(await run(["token", "--api", "http://10.0.0.5:8080"], {}, remote), 1);
  assert.match(remote.stderr, /not on this machine/);
});

Deno.test("status against nothing exits 1 naming the address", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const io = capture();
  assert.equal(await run(["status", "--api", `http://127.0.0.1:${port}`], {}, io), 1);
  assert.match(io.stderr, new RegExp(`cannot reach http://127\\.0\\.0\\.1:${port}`));
});

Deno.test("deno task migrate / deno task status: real exit codes", async () => {
  await using p = await pair();
  const root = new URL("../../", import.meta.url).pathname;
  const task = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", ...args],
      cwd: root,
      env: p.env,
      stdout: "piped",
      stderr: "piped",
    }).output();
  const ok = await task(["migrate", "--", "--api", p.src.url, "--to", p.to, "--speed", "64M"]);
  const out = new TextDecoder().decode(ok.stdout);
  assert.equal(ok.code, 0, out + new TextDecoder().decode(ok.stderr));
  assert.match(out, /\| status +\| completed +\|/);
  const again = await task(["migrate", "--", "--api", p.src.url, "--to", p.to]);
  assert.equal(again.code, 1, "the destination is no longer listening: failed");
  const st = await task(["status", "--", "--api", p.src.url]);
  assert.equal(st.code, 0);
  assert.match(new TextDecoder().decode(st.stdout), /\| status +\| failed +\|/);
});

Deno.test("deno task token / deno task status find a generated token with the tasks' permissions", async () => {
  await using f = await generatedTokenFerry();
  const root = new URL("../../", import.meta.url).pathname;
  const task = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", ...args],
      cwd: root,
      env: { XDG_RUNTIME_DIR: f.runtime, FERRY_TOKEN: "" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  const dec = new TextDecoder();
  const tok = await task(["token", "--", "--api", f.src.url]);
  assert.equal(tok.code, 0, dec.decode(tok.stderr));
  assert.equal(dec.decode(tok.stdout), `${f.src.token}\n`);
  const st = await task(["status", "--", "--api", f.src.url]);
  assert.equal(st.code, 0, dec.decode(st.stderr));
  assert.match(dec.decode(st.stdout), /\| status +\| none +\|/);
});

Deno.test("a capability the ferry refuses is reported with its code and reason; nothing starts", async () => {
  // A stub API that refuses every capability the way ferry does.
  const calls: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    calls.push(`${req.method} ${new URL(req.url).pathname}`);
    return Response.json({
      error: {
        code: "capability-unsupported",
        message: 'Cannot enable capability "xbzrle": XBZRLE compression is not implemented yet',
        field: "xbzrle",
      },
    }, { status: 400 });
  });
  try {
    const io = capture();
    const code = await run(
      ["migrate", "--api", `http://127.0.0.1:${server.addr.port}`, "--to", "tcp:h:1", "--xbzrle"],
      {},
      io,
    );
    assert.equal(code, 1);
    assert.equal(
      io.stderr,
      "ferry migrate: cannot enable xbzrle: PUT /migrations/capabilities answered 400 " +
        'capability-unsupported: Cannot enable capability "xbzrle": XBZRLE compression is not ' +
        "implemented yet\n",
    );
    assert.deepEqual(calls, ["PUT /migrations/capabilities"], "no migration was attempted");
  } finally {
    await server.shutdown();
  }
});
