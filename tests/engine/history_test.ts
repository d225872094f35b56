import assert from "node:assert/strict";
import type { MigrationRecord, Timeline } from "../../engine/contract.ts";
import { HistoryError, MAX_TIMELINES, MigrationHistory } from "../../engine/history.ts";

function record(n: number, over: Partial<MigrationRecord> = {}): MigrationRecord {
  return {
    id: `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`,
    direction: "outgoing",
    status: "completed",
    uri: "tcp:127.0.0.1:4444",
    started_at: 1_764_000_000_000 + n,
    bytes: n * 1000,
    ...over,
  };
}

function timeline(id: string): Timeline {
  return { id, windows: [], passes: [], events: [], dropped_windows: 0 };
}

Deno.test("MigrationHistory: records and timelines survive a reopen of the state directory", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ferry-history-" });
  try {
    const h = await MigrationHistory.open(dir);
    h.add(record(1), timeline(record(1).id));
    h.add(record(2, { direction: "incoming", status: "failed", error_desc: "cut" }));
    await h.flushed;
    assert.equal((await Deno.stat(`${dir}/history.jsonl`)).mode! & 0o777, 0o600);
    const again = await MigrationHistory.open(dir);
    assert.deepEqual(again.list(), [
      record(2, { direction: "incoming", status: "failed", error_desc: "cut" }),
      record(1),
    ]);
    assert.deepEqual(again.get(record(1).id), record(1));
    assert.deepEqual(again.timeline(record(1).id), timeline(record(1).id));
    assert.equal(again.timeline(record(2).id), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MigrationHistory: bounded: keeps the last `max` records, rewrites its file past twice that, keeps the last timelines", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ferry-history-" });
  try {
    const h = await MigrationHistory.open(dir, { max: 3 });
    const n = MAX_TIMELINES + 4;
    for (let i = 1; i <= n; i++) h.add(record(i), timeline(record(i).id));
    await h.flushed;
    assert.deepEqual(h.list().map((r) => r.bytes), [n, n - 1, n - 2].map((i) => i * 1000));
    const lines = (await Deno.readTextFile(`${dir}/history.jsonl`)).trim().split("\n");
    assert.ok(lines.length <= 6, `${lines.length} lines on disk`);
    const files = [];
    for await (const f of Deno.readDir(`${dir}/timelines`)) files.push(f.name);
    assert.equal(files.length, 3, `timelines of records no longer kept are removed: ${files}`);
    const again = await MigrationHistory.open(dir, { max: 3 });
    assert.deepEqual(again.list(), h.list());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MigrationHistory: a damaged line is skipped with a warning, the others load", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ferry-history-" });
  try {
    await Deno.writeTextFile(
      `${dir}/history.jsonl`,
      JSON.stringify(record(1)) + "\n{not json\n" + JSON.stringify({ id: 5 }) + "\n" +
        JSON.stringify(record(2)) + "\n",
    );
    const errors: string[] = [];
    const h = await MigrationHistory.open(dir, { onError: (e) => errors.push(e.message) });
    assert.deepEqual(h.list().map((r) => r.id), [record(2).id, record(1).id]);
    assert.equal(errors.length, 2);
    assert.match(errors[0], /history\.jsonl: line 2 is not a migration record: skipped/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MigrationHistory.open(): a state directory that cannot be made fails naming it", async () => {
  const file = await Deno.makeTempFile();
  try {
    await assert.rejects(
      MigrationHistory.open(`${file}/state`),
      (e: Error) => e instanceof HistoryError && e.message.includes(`${file}/state`),
    );
  } finally {
    await Deno.remove(file);
  }
});
