import assert from "node:assert/strict";
import {
  breakdownOf,
  busyCommands,
  countLines,
  IMAGE_STEPS,
  imageCommands,
  parseDowntimeBreakdown,
  spread,
} from "../../bench/x86_helpers.ts";

/** The message engine/outgoing.ts writes for a downtime over the limit. */
const EXCEEDED = "The downtime (143 ms) exceeded downtime_limit (84 ms): stopping the guest took " +
  "1 ms, the final dirty-log sync 52 ms, the last pages 3 ms, device state 40 ms, the end of " +
  "the stream and the destination's answer 47 ms";

Deno.test("parseDowntimeBreakdown reads each part of the warning", () => {
  assert.deepEqual(parseDowntimeBreakdown(EXCEEDED), {
    stop: 1,
    finalSync: 52,
    lastPages: 3,
    deviceState: 40,
    destination: 47,
  });
  assert.equal(parseDowntimeBreakdown("The round trip (40 ms) alone exceeds"), null);
});

Deno.test("breakdownOf takes the downtime-limit-exceeded warning only", () => {
  assert.equal(breakdownOf(undefined), null);
  assert.equal(breakdownOf([{ code: "downtime-limit-unachievable", message: EXCEEDED }]), null);
  assert.equal(
    breakdownOf([
      { code: "downtime-limit-unachievable", message: "…" },
      { code: "downtime-limit-exceeded", message: EXCEEDED },
    ])?.finalSync,
    52,
  );
});

Deno.test("busyCommands rewrites the whole file in 8 MiB copies, then zeros", () => {
  const [fill, loop] = busyCommands(64);
  assert.match(fill, /^mount -o remount,size=80M \/dev\/shm; /);
  assert.match(fill, /of=\/dev\/shm\/src bs=1M count=8 /);
  assert.match(loop, /for o in 0 8 16 24 32 40 48 56; do /);
  assert.match(loop, /if=\/dev\/zero of=\/dev\/shm\/dst bs=1M count=64 /);
  assert.ok(fill.endsWith("\n") && loop.endsWith("&\n"));
  assert.match(busyCommands(256)[1], / 248; do .* count=256 /);
  assert.throws(() => busyCommands(60), RangeError);
  assert.throws(() => busyCommands(0), RangeError);
});

Deno.test("the busy loop's lines are counted in its output, never in the typed command", () => {
  const [fill, loop] = busyCommands(64);
  // The console echoes what is typed (LF as CRLF), then the guest answers.
  const typed = (fill + loop).replaceAll("\n", "\r\n");
  assert.equal(countLines(typed, "filled"), 0);
  assert.equal(countLines(typed, "pass"), 0);
  const answered = typed + "filled\r\ntick 7 0123456789abcdef\r\nguest# pass\r\npass\r\npas";
  assert.equal(countLines(answered, "filled"), 1);
  assert.equal(countLines(answered, "pass"), 2);
  assert.equal(countLines("bypass\r\n", "pass"), 0);
});

Deno.test("spread gives the median and the range, ignoring NaN", () => {
  const f = (x: number) => `${x}`;
  assert.equal(spread([3, 1, 2], f), "2 (1–3)");
  assert.equal(spread([5, NaN], f), "5");
  assert.equal(spread([NaN], f), "—");
  assert.equal(spread([], f), "—");
});

Deno.test("imageCommands scale to RAM, end each step with its word, and never match the typed line", () => {
  const lines = imageCommands(1024);
  assert.equal(lines.length, IMAGE_STEPS.length);
  assert.match(lines[0], /^mount -o remount,size=614M \/dev\/shm; cd \/dev\/shm; /);
  assert.match(lines[1], /i < 1048576;/, "1/16 of RAM of 64-byte log lines");
  assert.match(lines[3], /bs=1M count=32 /, "1/32 of RAM of random bytes");
  for (const line of lines) assert.ok(line.endsWith("\n"));
  const typed = lines.join("").replaceAll("\n", "\r\n");
  for (const word of IMAGE_STEPS) assert.equal(countLines(typed, word), 0, word);
  const answered = typed + IMAGE_STEPS.map((w) => `${w}\r\n`).join("");
  for (const word of IMAGE_STEPS) assert.equal(countLines(answered, word), 1, word);
  assert.throws(() => imageCommands(32), RangeError);
  assert.throws(() => imageCommands(100.5), RangeError);
});
