/**
 * The x86 demo guest's tick chain: its `/init` prints one line about every 100 ms on
 * ttyS0, so anyone reading the console alone can tell that the guest skipped or
 * repeated nothing (e.g. across a migration).
 *
 * The line is `tick N H`: N counts from 1 in decimal; H is 16 lowercase hex digits,
 * the first 16 of the MD5 of the ASCII text `PREV N\n`, where PREV is the previous
 * line's H (for N = 1, sixteen `0`s). In busybox sh:
 * `h=$(echo "$h $n" | md5sum); h=${h:0:16}`. On the console the line ends in CRLF;
 * echoed keyboard input may stand before `tick` on the same line.
 */
import { createHash } from "node:crypto";

/** H before the first tick: sixteen zeros. */
export const TICK_SEED = "0000000000000000";

/** One tick line's values. */
export interface Tick {
  /** The counter, from 1. */
  readonly n: number;
  /** The chain hash, 16 lowercase hex digits. */
  readonly h: string;
}

/** H of tick `n` whose predecessor's H is `prev`. */
export function tickHash(prev: string, n: number): string {
  return createHash("md5").update(`${prev} ${n}\n`).digest("hex").slice(0, 16);
}

/** The `count` ticks following `after` (from the seed when absent), as the guest prints them. */
export function tickChain(count: number, after?: Tick): Tick[] {
  const ticks: Tick[] = [];
  let prev = after ?? { n: 0, h: TICK_SEED };
  for (let i = 0; i < count; i++) {
    prev = { n: prev.n + 1, h: tickHash(prev.h, prev.n + 1) };
    ticks.push(prev);
  }
  return ticks;
}

/** Formats a tick as the guest prints it, without the line end. */
export function formatTick(tick: Tick): string {
  return `tick ${tick.n} ${tick.h}`;
}

const TICK_AT_LINE_END = /tick ([1-9][0-9]*) ([0-9a-f]{16})\r*$/;

/**
 * The ticks in console text, in order. Only complete lines count (a trailing part
 * without `\n` is left for the next read); a tick must end its line, anything may
 * precede it (echoed input). Other lines are ignored.
 */
export function parseTicks(text: string): Tick[] {
  const ticks: Tick[] = [];
  const lines = text.split("\n");
  lines.pop(); // the unfinished line, or "" after a final \n
  for (const line of lines) {
    const m = TICK_AT_LINE_END.exec(line);
    if (m) ticks.push({ n: Number(m[1]), h: m[2] });
  }
  return ticks;
}

/**
 * Checks that `ticks` form one unbroken chain: each N one more than the last, each H
 * the hash of the last H and N. The first tick is checked against `after` when given,
 * against the seed when its N is 1, else taken as the anchor (a console read from
 * the middle). Returns null when the chain holds, else what breaks it, in one line.
 */
export function tickChainError(ticks: readonly Tick[], after?: Tick): string | null {
  let prev: Tick | undefined = after;
  for (const [i, tick] of ticks.entries()) {
    if (prev === undefined) {
      if (tick.n === 1 && tick.h !== tickHash(TICK_SEED, 1)) {
        return `tick 1 has H ${tick.h}, not ${tickHash(TICK_SEED, 1)} (from the seed)`;
      }
    } else if (tick.n !== prev.n + 1) {
      const what = tick.n <= prev.n ? "repeats or goes back" : `skips ${tick.n - prev.n - 1}`;
      return `tick ${tick.n} follows tick ${prev.n} (line ${i + 1}): the counter ${what}`;
    } else if (tick.h !== tickHash(prev.h, tick.n)) {
      return `tick ${tick.n} has H ${tick.h}, not ${
        tickHash(prev.h, tick.n)
      } (from tick ${prev.n})`;
    }
    prev = tick;
  }
  return null;
}
