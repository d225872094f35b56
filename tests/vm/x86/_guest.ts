/**
 * What the x86 guest tests share: hang guards (not speed limits) and waits on the
 * guest's console for its ticks and for the shell's answer to `echo $((6*7))`.
 */
import type { ConsoleLog } from "../../../vm/x86/console_log.ts";
import { parseTicks, type Tick } from "../../../vm/x86/ticks.ts";
import { withTimeout } from "../../helpers/wait.ts";

/** Hang guard for a boot (an emulated boot takes seconds to tens of seconds). */
export const BOOT_GUARD_MS = 600_000;
/** Hang guard for the guest to print a few more lines. */
export const LINES_GUARD_MS = 300_000;

/** The question typed on the guest's console; {@link fortyTwo} waits for its answer. */
export const QUESTION = "echo $((6*7))\n";

/** Resolves with the console's ticks once it holds at least `count` of them. */
export function ticksAtLeast(log: ConsoleLog, count: number): Promise<Tick[]> {
  return log.waitFor((text) => {
    const ticks = parseTicks(text);
    return ticks.length >= count && ticks;
  });
}

/** Resolves once a line `42` follows offset `from` of the console (under a hang guard). */
export async function fortyTwo(log: ConsoleLog, from: number): Promise<void> {
  await withTimeout(
    log.waitFor((text) => /(^|\n)42\r?\n/.test(text.slice(from))),
    LINES_GUARD_MS,
    "the answer 42",
  );
}
