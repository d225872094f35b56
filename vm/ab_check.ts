/**
 * The `ab` workload's invariant, checkable by anyone holding the RAM: byte 0 of the
 * pages in the range holds at most two distinct values, and when two, they are
 * adjacent mod 256 (the pages before the cursor are one increment ahead). It holds
 * for a guest started from uniform RAM (e.g. `--fill zero`) and must still hold on a
 * migration's destination — a cheap end-to-end correctness check.
 */
import { PAGE_SIZE } from "./ram.ts";

/**
 * Checks the invariant over byte 0 of pages `[0, pages)` of `bytes`; returns null when
 * it holds, else a one-line description of the violation.
 */
export function abInvariantViolation(bytes: Uint8Array, pages: number): string | null {
  if (pages <= 0) return null;
  const first = bytes[0];
  let other = -1;
  for (let p = 1; p < pages; p++) {
    const v = bytes[p * PAGE_SIZE];
    if (v === first || v === other) continue;
    if (other === -1 && (((v - first) & 0xff) === 1 || ((first - v) & 0xff) === 1)) {
      other = v;
      continue;
    }
    return other === -1
      ? `page ${p} byte 0 is ${v}, not adjacent to page 0's ${first}`
      : `page ${p} byte 0 is ${v}, a third value besides ${first} and ${other}`;
  }
  return null;
}

/**
 * Byte 0 of page `page` after `ops` ab ops over `rangePages` pages started from zero
 * RAM at cursor 0: the number of times that page was incremented, mod 256.
 */
export function abExpectedByte(ops: number, page: number, rangePages: number): number {
  return ops <= page ? 0 : Math.floor((ops - page - 1) / rangePages + 1) & 0xff;
}
