import assert from "node:assert/strict";
import { capture } from "../helpers/cli_io.ts";
import { generateToken } from "../../api_token.ts";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { run } from "../../tools/ferryctl.ts";
import { EXIT_NO_CONVERGENCE, planText } from "../../tools/ferryctl_plan.ts";

Deno.test("plan against a real ferry: measures first, converges with a fast link (exit 0), not with a slow one (exit 3, and says what would)", async () => {
  const token = generateToken();
  await using src = await FerryProcess.start(
    ["--ram", "16M", "--fill", "random", "--workload", "random:rate=4M"],
    {},
    { token },
  );
  const env = { FERRY_TOKEN: token };
  const fast = capture();
  const code = await run(
    ["plan", "--api", src.url, "--speed", "256M", "--downtime", "300ms", "--measure", "500ms"],
    env,
    fast,
  );
  assert.equal(code, 0, fast.stdout + fast.stderr);
  assert.match(fast.stderr, /measuring the dirty rate for 500 ms/);
  assert.match(fast.stdout, /^plan: converges in /);
  assert.match(fast.stdout, /link 256\.0 MiB\/s \(max_bandwidth\), round trip not probed/);
  assert.match(fast.stdout, /dirty rate [\d.]+ MiB\/s; working set 100 ms /);
  const slow = capture();
  const code2 = await run(["plan", "--api", src.url, "--speed", "512K", "--json"], env, slow);
  assert.equal(code2, EXIT_NO_CONVERGENCE, slow.stdout + slow.stderr);
  const plan = JSON.parse(slow.stdout);
  assert.equal(plan.converges, false);
  assert.equal(plan.bandwidth, 512 << 10);
  assert.ok(plan.to_converge.bandwidth > 512 << 10);
  assert.equal(slow.stderr, "", "the last measurement was used");
  // The plan changed nothing on the ferry.
  const params = await src.api("GET", "/migrations/parameters");
  assert.notEqual(params.body.max_bandwidth, 512 << 10);
  assert.equal((await src.api("GET", "/migrations/current")).body.status, "none");
});

Deno.test("plan: a bad --speed is a usage error (exit 2); an unreachable API exits 1", async () => {
  const io = capture();
  assert.equal(await run(["plan", "--speed", "fast"], {}, io), 2);
  assert.match(io.stderr, /Invalid --speed/);
  const down = capture();
  assert.equal(await run(["plan", "--api", "http://127.0.0.1:1"], { FERRY_TOKEN: "x" }, down), 1);
  assert.match(down.stderr, /cannot reach http:\/\/127\.0\.0\.1:1/);
});

Deno.test("planText says what would make a plan converge", () => {
  const text = planText({
    converges: false,
    outcome: "stalled-failed",
    total_time_ms: 12_000,
    passes: 9,
    downtime_ms: 850,
    throttle: 0,
    bandwidth: 64 << 20,
    rtt_ms: 0.25,
    rtt_source: "probe",
    dirty_rate: { status: "none" },
    explanation: "Does not converge: …",
    to_converge: {
      bandwidth: 300 << 20,
      auto_converge: { converges: true, total_time_ms: 9000, throttle: 60 },
      xbzrle: { converges: true, total_time_ms: 7000, ratio: 12.5 },
    },
    assumptions: ["the disk of block migration is not modelled"],
  }, 30);
  assert.match(text, /^plan: does not converge: fails after 12\.00 s, 9 dirty-log syncs/);
  assert.match(text, /round trip 0\.25 ms/);
  assert.match(
    text,
    /to converge: --speed 300\.0 MiB\/s or more; or --auto-converge \(converges in 9\.00 s at throttle 60 %\); or xbzrle \(predicted ratio 12\.5: converges in 7\.00 s\)/,
  );
  assert.match(text, /assumes the disk of block migration is not modelled/);
});
