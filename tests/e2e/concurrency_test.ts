/**
 * Concurrent requests against real ferry processes over real HTTP: racing
 * migration starts, parameter and capability changes racing a start, and 100
 * event-stream clients watching one migration.
 */
import assert from "node:assert/strict";
import { type FerryClient, FerryProcess } from "../../testing/ferry_process.ts";
import {
  destinationFinal,
  migrateAndCompare,
  rearm,
  setParams,
  sourceFinal,
  startDestination,
  UNLIMITED,
} from "../helpers/ferries.ts";
import { waitUntil } from "../helpers/wait.ts";

Deno.test("concurrency: two (and ten) POST /migrations at once → exactly one 202, the others 409 migration-active", async () => {
  await using src = await FerryProcess.start(["--ram", "16M", "--fill", "random"]);
  await using dst = await startDestination("16M");
  for (const n of [2, 10]) {
    await setParams(src, { max_bandwidth: 50_000_000 });
    const answers = await Promise.all(
      Array.from({ length: n }, () => src.api("POST", "/migrations", { uri: dst.incoming })),
    );
    const accepted = answers.filter((a) => a.status === 202);
    assert.equal(accepted.length, 1, JSON.stringify(answers.map((a) => a.status)));
    for (const a of answers.filter((a) => a.status !== 202)) {
      assert.equal(a.status, 409);
      assert.equal(a.body.error.code, "migration-active");
    }
    assert.equal((await sourceFinal(src)).status, "completed");
    assert.equal((await destinationFinal(dst)).status, "completed");
    assert.equal((await src.api("POST", "/vm/start")).status, 200);
    await rearm(dst);
  }
});

Deno.test("concurrency: PATCH parameters racing a start applies (200) and the running migration uses it; capabilities answer 200 before and 409 once active", async () => {
  await using src = await FerryProcess.start(["--ram", "32M", "--fill", "random"]);
  await using dst = await startDestination("32M");
  await setParams(src, { max_bandwidth: 10_000_000 });
  const [start, patch, caps] = await Promise.all([
    src.api("POST", "/migrations", { uri: dst.incoming }),
    src.api("PATCH", "/migrations/parameters", { downtime_limit: 500, progress_timeout: 30_000 }),
    src.api("PUT", "/migrations/capabilities", { zero_blocks: false }),
  ]);
  assert.equal(start.status, 202);
  assert.equal(patch.status, 200, "parameters apply at any time");
  assert.equal(patch.body.downtime_limit, 500);
  // Capabilities are fixed once a migration is under way: whichever came first wins.
  assert.ok([200, 409].includes(caps.status), JSON.stringify(caps));
  if (caps.status === 409) assert.equal(caps.body.error.code, "migration-active");
  // While active: capabilities 409, parameters 200 (max_bandwidth applies at the next window).
  await src.waitFor("/migrations/current", (b) => b.status === "active");
  const during = await src.api("PUT", "/migrations/capabilities", { zero_blocks: false });
  assert.equal(during.status, 409);
  assert.equal(during.body.error.code, "migration-active");
  const faster = await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED });
  assert.equal(faster.status, 200);
  const params = (await src.api("GET", "/migrations/parameters")).body;
  assert.deepEqual(
    [params.downtime_limit, params.progress_timeout, params.max_bandwidth],
    [500, 30_000, UNLIMITED],
  );
  assert.equal((await sourceFinal(src)).status, "completed");
  assert.equal((await destinationFinal(dst)).status, "completed");
  const after = await src.api("PUT", "/migrations/capabilities", { zero_blocks: false });
  assert.equal(after.status, 200, "capabilities change again once nothing is active");
});

/**
 * Reads one SSE client until it saw a `state` event to a final state; returns the
 * states. `hello` runs when the stream's hello arrives (the client is subscribed).
 */
async function watch(
  ferry: FerryClient,
  signal: AbortSignal,
  hello: () => void = () => {},
): Promise<string[]> {
  const res = await ferry.fetch("/migrations/events", { signal });
  assert.equal(res.status, 200);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const states: string[] = [];
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event === "hello") hello();
        if (event === "state" && data) {
          const to = JSON.parse(data).to;
          states.push(to);
          if (["completed", "failed", "cancelled"].includes(to)) return states;
        }
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return states;
}

Deno.test("concurrency: 100 event-stream clients all see a migration from setup to completed, and the API keeps answering", async () => {
  await using src = await FerryProcess.start(["--ram", "32M", "--fill", "random"]);
  await using dst = await startDestination("32M");
  const abort = new AbortController();
  let hellos = 0;
  const clients = Array.from({ length: 100 }, () => watch(src, abort.signal, () => hellos++));
  try {
    // Every client is connected once the ferry has answered 100 hellos; then migrate.
    await waitUntil(() => hellos === 100, "100 hellos");
    await setParams(src, { max_bandwidth: 60_000_000 });
    const started = await src.api("POST", "/migrations", { uri: dst.incoming });
    assert.equal(started.status, 202);
    const info = await src.waitFor("/migrations/current", (b) => b.status === "completed");
    assert.equal(info.status, "completed");
    const seen = await Promise.all(clients);
    for (const states of seen) {
      assert.deepEqual(states.slice(-2), ["active", "completed"], JSON.stringify(states));
    }
  } finally {
    abort.abort();
    await Promise.allSettled(clients);
  }
  assert.equal((await destinationFinal(dst)).status, "completed");
  // And the pair still migrates back and forth afterwards.
  await src.api("POST", "/vm/start");
  await rearm(dst);
  await migrateAndCompare(src, dst);
});
