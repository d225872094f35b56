import assert from "node:assert/strict";
import { bootEventId, Notifier } from "../../engine/notifier.ts";

type Ev = { kind: string };

Deno.test("Notifier.emit() stamps increasing ids and delivers to every listener in subscription order", () => {
  const n = new Notifier<Ev>();
  const seen: string[] = [];
  n.subscribe((e) => seen.push(`a:${e.kind}:${e.id}`));
  n.subscribe((e) => seen.push(`b:${e.kind}:${e.id}`));
  assert.equal(n.nextId, 1);
  const first = n.emit({ kind: "x" });
  n.emit({ kind: "y" });
  assert.deepEqual(first, { kind: "x", id: 1 });
  assert.equal(n.nextId, 3);
  assert.deepEqual(seen, ["a:x:1", "b:x:1", "a:y:2", "b:y:2"]);
});

Deno.test("Notifier.emit() does not mutate the event it was given", () => {
  const n = new Notifier<Ev>();
  const ev = { kind: "x" };
  const stamped = n.emit(ev);
  assert.deepEqual(ev, { kind: "x" });
  assert.notEqual(stamped, ev);
});

Deno.test("Notifier.emit() with no listeners still consumes an id", () => {
  const n = new Notifier<Ev>();
  assert.equal(n.emit({ kind: "x" }).id, 1);
  assert.equal(n.emit({ kind: "x" }).id, 2);
});

Deno.test("Notifier.subscribe() returns an unsubscribe function; a late subscriber sees only later events", () => {
  const n = new Notifier<Ev>();
  const a: number[] = [];
  const b: number[] = [];
  const offA = n.subscribe((e) => a.push(e.id));
  assert.equal(n.size, 1);
  n.emit({ kind: "1" });
  n.subscribe((e) => b.push(e.id));
  assert.equal(n.size, 2);
  n.emit({ kind: "2" });
  offA();
  assert.equal(n.size, 1);
  offA(); // idempotent
  assert.equal(n.size, 1);
  n.emit({ kind: "3" });
  assert.deepEqual(a, [1, 2]);
  assert.deepEqual(b, [2, 3]);
});

Deno.test("Notifier.emit() isolates a throwing listener from the others", () => {
  const n = new Notifier<Ev>();
  const seen: number[] = [];
  const logged: unknown[][] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => logged.push(args);
  try {
    n.subscribe(() => {
      throw new Error("listener broke");
    });
    n.subscribe((e) => seen.push(e.id));
    const ev = n.emit({ kind: "x" });
    assert.equal(ev.id, 1);
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, [1]);
  assert.equal(logged.length, 1);
  assert.match(String(logged[0][1]), /listener broke/);
});

Deno.test("Notifier: a listener may unsubscribe itself while an event is delivered", () => {
  const n = new Notifier<Ev>();
  const seen: string[] = [];
  const off = n.subscribe(() => {
    seen.push("once");
    off();
  });
  n.subscribe(() => seen.push("always"));
  n.emit({ kind: "x" });
  n.emit({ kind: "y" });
  assert.deepEqual(seen, ["once", "always", "always"]);
});

Deno.test("Notifier.since() replays the kept events after an id, oldest first", () => {
  const n = new Notifier<Ev>(4);
  assert.equal(n.historySize, 4);
  assert.equal(n.lastId, 0);
  assert.deepEqual(n.since(0), []);
  for (const kind of ["a", "b", "c"]) n.emit({ kind });
  assert.equal(n.lastId, 3);
  assert.deepEqual(n.since(0)?.map((e) => e.kind), ["a", "b", "c"]);
  assert.deepEqual(n.since(1)?.map((e) => e.id), [2, 3]);
  assert.deepEqual(n.since(3), [], "caught up");
  for (const kind of ["d", "e", "f"]) n.emit({ kind });
  // The ring holds ids 3..6: resuming after 2 works, after 1 does not.
  assert.deepEqual(n.since(2)?.map((e) => e.id), [3, 4, 5, 6]);
  assert.equal(n.since(1), null, "id 2 is no longer kept");
  assert.equal(n.since(0), null);
  assert.equal(n.since(7), null, "an id from the future (another process) cannot be resumed");
  assert.equal(n.since(-1), null);
  assert.equal(n.since(1.5), null);
});

Deno.test("Notifier with no history keeps nothing but still stamps ids", () => {
  const n = new Notifier<Ev>(0);
  n.emit({ kind: "a" });
  assert.deepEqual(n.since(1), []);
  assert.equal(n.since(0), null);
  assert.throws(() => new Notifier<Ev>(-1), RangeError);
});

Deno.test("Notifier numbers events from firstId, and since() refuses ids from before it", () => {
  const first = bootEventId(1_764_000_000_000);
  assert.equal(first, 176_400_000_000_000);
  const n = new Notifier<Ev>(8, first);
  const a = n.emit({ kind: "a" });
  n.emit({ kind: "b" });
  assert.equal(a.id, first);
  assert.equal(n.lastId, first + 1);
  assert.deepEqual(n.since(first)!.map((e) => e.kind), ["b"]);
  // An id a previous process handed out (small, or just below first) is not replayed.
  assert.equal(n.since(5), null);
  assert.equal(n.since(first - 2), null);
  assert.throws(() => new Notifier<Ev>(8, 0), RangeError);
  assert.ok(bootEventId(1_764_000_000_001) > first, "a later start gets higher ids");
});
