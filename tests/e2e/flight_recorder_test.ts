/**
 * The flight recorder and the history end to end: two ferries on real sockets
 * (API and migration on port 0), the source on an injected clock, both keeping
 * their history in a state directory. A migration the guest outruns is cancelled
 * at its deadline, then one that converges completes; both ends list both, the
 * source explains each and serves its timeline as JSON and NDJSON, and a ferry
 * restarted on the same state directory still does.
 */
import assert from "node:assert/strict";
import { MigrationHistory } from "../../engine/history.ts";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { TestGuest } from "../../testing/test_guest.ts";
import { PAGE_SIZE } from "../../vm/ram.ts";
import { dirtyingClock, LiveFerry } from "../helpers/live_ferry.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/;

Deno.test("flight recorder and history: ids, timelines (JSON and NDJSON), explanations, both ends' history, across a restart", async () => {
  const srcDir = await Deno.makeTempDir({ prefix: "ferry-state-src-" });
  const dstDir = await Deno.makeTempDir({ prefix: "ferry-state-dst-" });
  try {
    const guest = new TestGuest([["pc.ram", 512 * PAGE_SIZE]]);
    guest.fillRandom(3);
    guest.start();
    const clock = dirtyingClock(guest, 400);
    let outrunId: string, convergedId: string;
    {
      await using src = LiveFerry.start({
        guest,
        clock,
        history: await MigrationHistory.open(srcDir),
      });
      await using dst = LiveFerry.start({ history: await MigrationHistory.open(dstDir) });
      const anonymous = await fetch(`${src.url}/migrations`);
      await anonymous.body?.cancel();
      assert.equal(anonymous.status, 401, "the history needs the token too");
      await src.api("PATCH", "/migrations/parameters", {
        max_bandwidth: 10 << 20,
        completion_timeout_ms: 3000,
        downtime_limit: 30,
      });
      // 1: the guest dirties 400 pages a window, the link carries 256: cancelled at the deadline.
      let res = await src.api("POST", "/migrations", { uri: await dst.listen() });
      assert.equal(res.status, 202);
      outrunId = res.body.id;
      assert.match(outrunId, UUID);
      assert.equal(await src.outgoingFinal(), "cancelled");
      await dst.incomingFinal();
      const outrun = (await src.api("GET", `/migrations/${outrunId}`)).body;
      assert.equal(outrun.status, "cancelled");
      assert.match(
        outrun.explanation.convergence,
        /^It was cancelled at its deadline after 3\.\d s; it could not have converged: dirty rate [\d.]+ MB\/s (exceeded|kept up with) the [\d.]+ MB\/s link from pass \d+ on$/,
      );
      assert.equal(outrun.explanation.downtime, "No downtime: the guest runs on here");
      const tl = (await src.api("GET", `/migrations/${outrunId}/timeline`)).body;
      assert.equal(tl.id, outrunId);
      assert.ok(tl.windows.length >= 30, `${tl.windows.length} windows in 3 s`);
      for (const [i, w] of tl.windows.entries()) {
        assert.equal(w.t, (i + 1) * 100, "one record per 100 ms window");
        // The budget of a window, give or take the record that crossed it (bytes, not time).
        assert.ok(Math.abs(w.bandwidth - (10 << 20)) < (10 << 20) / 50, `${w.bandwidth} B/s`);
        assert.ok(w.bytes > 0 && w.pages > 0 && w.max_size > 0, JSON.stringify(w));
      }
      assert.ok(
        tl.passes.length >= 2 && tl.passes.every((p: { dirty_pages: number }) => p.dirty_pages > 0),
      );
      assert.ok(tl.windows.some((w: { dirty_pages: number }) => w.dirty_pages > 0));
      assert.deepEqual(
        tl.events.filter((e: { kind: string }) => e.kind === "warning").map((e: { text: string }) =>
          e.text.split(":")[0]
        ),
        ["completion-timeout-cancel"],
      );
      const nd = await src.fetch(`/migrations/${outrunId}/timeline`, {
        headers: { accept: "application/x-ndjson" },
      });
      assert.equal(nd.headers.get("content-type"), "application/x-ndjson");
      const lines = (await nd.text()).trimEnd().split("\n").map((l) => JSON.parse(l));
      assert.deepEqual(lines, tl.windows);

      // 2: the guest slows to 20 pages a window: it converges and completes.
      clock.perSleep = 20;
      await src.api("PATCH", "/migrations/parameters", { downtime_limit: 300 });
      res = await src.api("POST", "/migrations", { uri: await dst.listen() });
      convergedId = res.body.id;
      assert.equal(await src.outgoingFinal(), "completed");
      assert.equal(await dst.incomingFinal(), "completed");
      const done = (await src.api("GET", `/migrations/${convergedId}`)).body;
      assert.match(done.explanation.convergence, /^It converged at pass \d+ after [\d.]+ s: /);
      assert.match(done.explanation.downtime, /stayed within downtime_limit \(300 ms\)/);
      assert.equal(
        done.bytes,
        (await src.api("GET", "/migrations/current")).body.ram && done.bytes,
      );

      // Both ends list both, newest first.
      const srcList = (await src.api("GET", "/migrations")).body;
      assert.deepEqual(srcList.map((r: { id: string }) => r.id), [convergedId, outrunId]);
      assert.deepEqual(srcList.map((r: { status: string }) => r.status), [
        "completed",
        "cancelled",
      ]);
      const dstList = (await dst.api("GET", "/migrations")).body;
      assert.deepEqual(dstList.map((r: { direction: string }) => r.direction), [
        "incoming",
        "incoming",
      ]);
      assert.deepEqual(dstList.map((r: { status: string }) => r.status), ["completed", "failed"]);
      assert.ok(dstList[0].bytes > 0 && dstList[0].total_time >= 0);
      const incomingId = dstList[0].id;
      const noTl = await dst.api("GET", `/migrations/${incomingId}/timeline`);
      assert.equal(noTl.status, 404);
      assert.match(noTl.body.error.message, /recorded by its source/);
      const malformed = await src.api("GET", "/migrations/abc-123");
      assert.equal(malformed.status, 400, "hex, but not a UUID");
      assert.equal(malformed.body.error.field, "id");
      assert.equal((await src.api("GET", "/migrations/not-an-id")).status, 404, "no such route");
      assert.equal((await src.api("GET", "/migrations/plan")).status, 405, "plan is POST only");
      const unknown = await src.api("GET", `/migrations/${crypto.randomUUID()}`);
      assert.equal(unknown.status, 404);
      assert.equal(unknown.body.error.code, "migration-not-found");
    }
    // A restart on the same state directories keeps all of it.
    await using again = LiveFerry.start({ history: await MigrationHistory.open(srcDir) });
    const list = (await again.api("GET", "/migrations")).body;
    assert.deepEqual(list.map((r: { id: string }) => r.id), [convergedId, outrunId]);
    assert.match(list[1].explanation.convergence, /could not have converged/);
    const tl = await again.api("GET", `/migrations/${outrunId}/timeline`);
    assert.equal(tl.status, 200);
    assert.ok(tl.body.windows.length >= 30);
    await using dstAgain = LiveFerry.start({ history: await MigrationHistory.open(dstDir) });
    assert.equal((await dstAgain.api("GET", "/migrations")).body.length, 2);
  } finally {
    await Deno.remove(srcDir, { recursive: true });
    await Deno.remove(dstDir, { recursive: true });
  }
});

Deno.test("ferry --state-dir DIR: a real ferry creates DIR (0700) and answers GET /migrations from it", async () => {
  const parent = await Deno.makeTempDir({ prefix: "ferry-state-" });
  try {
    await using f = await FerryProcess.start(["--ram", "16M", "--state-dir", `${parent}/state`]);
    const res = await f.api("GET", "/migrations");
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, []);
    assert.equal((await Deno.stat(`${parent}/state`)).mode! & 0o777, 0o700);
    assert.ok((await Deno.stat(`${parent}/state/timelines`)).isDirectory);
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});
