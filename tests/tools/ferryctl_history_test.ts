import assert from "node:assert/strict";
import { capture } from "../helpers/cli_io.ts";
import { TestGuest } from "../../testing/test_guest.ts";
import { run } from "../../tools/ferryctl.ts";
import { historyTable, spread, table, timelineText } from "../../tools/ferryctl_history.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { dirtyingClock, LiveFerry } from "../helpers/live_ferry.ts";

Deno.test("table() pads text left and numbers right; spread() keeps the first and the last", () => {
  assert.equal(table(["a", "n"], [["xy", "1"], ["z", "10"]]), "a    n\nxy   1\nz   10");
  assert.deepEqual(spread([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 4), [1, 4, 7, 10]);
  assert.deepEqual(spread([1, 2], 5), [1, 2]);
});

Deno.test("historyTable() shows the short id, direction, outcome, start, times, bytes and passes", () => {
  const text = historyTable([{
    id: "0123abcd-0000-4000-8000-000000000000",
    direction: "outgoing",
    status: "completed",
    started_at: Date.UTC(2026, 0, 2, 3, 4, 5),
    total_time: 2100,
    downtime: 12.5,
    bytes: 3 << 20,
    passes: 4,
  }, {
    id: "99999999-0000-4000-8000-000000000000",
    direction: "incoming",
    status: "failed",
    started_at: Date.UTC(2026, 0, 2, 3, 0, 0),
    bytes: 0,
  }]);
  const [head, first, second] = text.split("\n");
  assert.match(head, /^id\s+direction\s+status\s+started\s+total\s+downtime\s+bytes\s+passes$/);
  assert.equal(first.indexOf("outgoing"), head.indexOf("direction"), "text columns align left");
  assert.match(
    first,
    /^0123abcd {2}outgoing\s+completed {2}2026-01-02 03:04:05\s+2\.10 s\s+12\.5 ms\s+3\.0 MiB\s+4$/,
  );
  assert.match(second, /^99999999 {2}incoming\s+failed\s+2026-01-02 03:00:00\s+—\s+—\s+0 B\s+—$/);
  assert.equal(historyTable([]), "no migrations yet");
});

Deno.test("timelineText() prints the explanation, then the windows (spread), with MB/s and the expected downtime", () => {
  const windows = Array.from({ length: 50 }, (_, i) => ({
    t: (i + 1) * 100,
    bandwidth: 10e6,
    dirty_rate: 12e6,
    remaining: 1 << 20,
    max_size: 300_000,
    expected_downtime: i === 0 ? -1 : 105,
    throttle: 0,
    pass: 1 + Math.floor(i / 10),
  }));
  const text = timelineText(
    {
      id: "x",
      direction: "outgoing",
      status: "cancelled",
      uri: "tcp:h:1",
      explanation: { convergence: "It was cancelled", downtime: "No downtime" },
    },
    { windows, passes: [{}, {}], dropped_windows: 0 },
    5,
  );
  const lines = text.split("\n");
  assert.equal(lines[0], "migration x (outgoing, cancelled, tcp:h:1)");
  assert.equal(lines[1], "convergence: It was cancelled");
  assert.equal(lines[2], "downtime:    No downtime");
  assert.equal(lines[3], "50 windows, 2 passes (5 of 50 shown; --ndjson prints all)");
  assert.match(lines[5], /^\s+t\s+bandwidth\s+dirty rate/);
  assert.equal(lines.length, 11);
  assert.match(
    lines[6],
    /^0\.1 s\s+10\.0 MB\/s\s+12\.0 MB\/s\s+1\.0 MiB\s+293\.0 KiB\s+—\s+0 %\s+1$/,
  );
  assert.match(lines[10], /^5\.0 s .* 105 ms\s+0 %\s+5$/);
});

Deno.test("ferryctl history and timeline against a ferry: the table, a prefix id, the explanation, JSON and NDJSON, and clear errors", async () => {
  const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
  guest.fillRandom(8);
  guest.start();
  await using src = LiveFerry.start({ guest, clock: dirtyingClock(guest, 20) });
  await using dst = LiveFerry.start();
  const env = { FERRY_TOKEN: src.token, FERRY_API: src.url };
  const empty = capture();
  assert.equal(await run(["history"], env, empty), 0);
  assert.equal(empty.stdout, "no migrations yet\n");

  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 10 << 20,
    downtime_limit: 300,
  });
  const id = (await src.api("POST", "/migrations", { uri: await dst.listen() })).body.id;
  assert.equal(await src.outgoingFinal(), "completed");

  const list = capture();
  assert.equal(await run(["history"], env, list), 0, list.stderr);
  assert.match(
    list.stdout.split("\n")[1],
    new RegExp(`^${id.slice(0, 8)}\\s+outgoing\\s+completed`),
  );

  const tl = capture();
  assert.equal(await run(["timeline", id.slice(0, 6), "--rows", "3"], env, tl), 0, tl.stderr);
  assert.match(tl.stdout, new RegExp(`^migration ${id} \\(outgoing, completed, tcp:`));
  assert.match(tl.stdout, /\nconvergence: It converged at pass \d+/);
  assert.match(tl.stdout, /\ndowntime: {4}The downtime \(\d+ ms\) stayed within downtime_limit/);
  const windows = (await src.api("GET", `/migrations/${id}/timeline`)).body.windows;
  assert.equal(tl.stdout.trimEnd().split("\n").length, 4 + 1 + 1 + Math.min(3, windows.length));

  const nd = capture();
  assert.equal(await run(["timeline", id, "--ndjson"], env, nd), 0);
  assert.deepEqual(nd.stdout.trimEnd().split("\n").map((l) => JSON.parse(l)), windows);
  const json = capture();
  assert.equal(await run(["timeline", id, "--json"], env, json), 0);
  assert.equal(JSON.parse(json.stdout).id, id);

  const unknown = capture();
  assert.equal(await run(["timeline", "ffff"], env, unknown), 1);
  assert.match(unknown.stderr, /no migration id starts with "ffff"/);
  const bad = capture();
  assert.equal(await run(["timeline"], env, bad), 2);
  assert.match(bad.stderr, /Give one migration id/);
  const refused = capture();
  assert.equal(
    await run(["history"], { FERRY_API: src.url, FERRY_TOKEN: "x".repeat(32) }, refused),
    1,
  );
  assert.match(refused.stderr, /GET \/migrations answered 401/);
});

Deno.test("deno task history / deno task timeline run with the tasks' permissions", async () => {
  const root = new URL("../../", import.meta.url).pathname;
  for (
    const [task, first] of [["history", /^Usage: deno task history/], [
      "timeline",
      /^Usage: deno task timeline -- ID/,
    ]] as const
  ) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", task, "--", "--help"],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(new TextDecoder().decode(out.stdout), first);
  }
});
