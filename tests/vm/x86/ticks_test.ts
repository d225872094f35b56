import assert from "node:assert/strict";
import {
  formatTick,
  parseTicks,
  type Tick,
  TICK_SEED,
  tickChain,
  tickChainError,
  tickHash,
} from "../../../vm/x86/ticks.ts";

Deno.test("tickHash is the first 16 hex digits of MD5 of 'PREV N\\n', as busybox md5sum prints it", () => {
  // `echo "0000000000000000 1" | md5sum` prints 04f2d58ed6a27fac07e2d15710de42d0.
  assert.equal(tickHash(TICK_SEED, 1), "04f2d58ed6a27fac");
  assert.equal(tickHash("04f2d58ed6a27fac", 2), "178103f35984a1da");
});

Deno.test("tickChain continues from the seed or from a given tick", () => {
  const ticks = tickChain(5);
  assert.deepEqual(ticks.map((t) => t.n), [1, 2, 3, 4, 5]);
  assert.equal(ticks[0].h, tickHash(TICK_SEED, 1));
  assert.deepEqual(tickChain(2, ticks[2]), ticks.slice(3));
  assert.equal(formatTick(ticks[0]), "tick 1 04f2d58ed6a27fac");
});

Deno.test("parseTicks reads complete CRLF lines, ignores other lines, allows echoed input before a tick", () => {
  const [a, b, c, d] = tickChain(4);
  const text = [
    "[    6.36] mce: Unable to init MCE device",
    formatTick(a),
    "guest# \x1b[6n" + formatTick(b),
    "echo $((6" + formatTick(c),
    "*7))",
    "42",
    formatTick(d).slice(0, 10), // unfinished: no line end yet
  ].join("\r\n");
  assert.deepEqual(parseTicks(text), [a, b, c]);
  assert.deepEqual(parseTicks(text + formatTick(d).slice(10) + "\r\n"), [a, b, c, d]);
  assert.deepEqual(parseTicks("tick 01 04f2d58ed6a27fac\r\ntick 1 04F2D58ED6A27FAC\r\n"), []);
  assert.deepEqual(parseTicks("tick 1 04f2d58ed6a27fac trailing\r\n"), []);
});

Deno.test("tickChainError accepts an unbroken chain, from the seed or from any anchor", () => {
  const ticks = tickChain(20);
  assert.equal(tickChainError(ticks), null);
  assert.equal(tickChainError(ticks.slice(7)), null); // read from the middle: the first is the anchor
  assert.equal(tickChainError(ticks.slice(7), ticks[6]), null);
  assert.equal(tickChainError([]), null);
});

Deno.test("tickChainError names a gap, a repeat, a reset, a wrong hash and a break from the anchor", () => {
  const ticks = tickChain(10);
  const gap = [...ticks.slice(0, 4), ...ticks.slice(5)];
  assert.match(tickChainError(gap)!, /tick 6 follows tick 4 .*skips 1/);
  const repeat = [...ticks.slice(0, 5), ticks[4], ...ticks.slice(5)];
  assert.match(tickChainError(repeat)!, /tick 5 follows tick 5 .*repeats or goes back/);
  const reset = [...ticks.slice(0, 5), ...tickChain(3)];
  assert.match(tickChainError(reset)!, /tick 1 follows tick 5/);
  const forged: Tick[] = [...ticks.slice(0, 3), { n: 4, h: "0123456789abcdef" }];
  assert.match(tickChainError(forged)!, /tick 4 has H 0123456789abcdef, not /);
  assert.match(tickChainError([{ n: 1, h: "0123456789abcdef" }])!, /from the seed/);
  assert.match(tickChainError(ticks.slice(6), ticks[4])!, /tick 7 follows tick 5/);
});
