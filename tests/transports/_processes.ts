/**
 * Process-table helpers for transport tests: which processes are alive in a
 * process group, and waiting until none are (no zombie, no orphan).
 */

/** One row of /proc/PID/stat: the fields tests look at. */
export interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  pgrp: number;
}

/** Reads /proc/PID/stat; null when the process is gone (reaped). */
export function procStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  // "pid (comm) state ppid pgrp …" — comm may hold spaces and parentheses.
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { pid, state: rest[0], ppid: Number(rest[1]), pgrp: Number(rest[2]) };
}

/** Every process (zombies included) whose process group is `pgrp`. */
export function groupMembers(pgrp: number): ProcStat[] {
  const out: ProcStat[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const stat = procStat(Number(entry.name));
    if (stat && stat.pgrp === pgrp) out.push(stat);
  }
  return out;
}

/** Processes whose command line contains `needle` (for finding a command's children). */
export function processesMatching(needle: string): number[] {
  const out: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`).replaceAll("\0", " ");
      if (cmdline.includes(needle)) out.push(Number(entry.name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * Waits until none of `pids` exists any more — not running, and not a zombie
 * either (a zombie still has /proc/PID) — and throws after `ms`, naming them.
 */
export async function waitGone(pids: number[], ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = pids.map(procStat).filter((s): s is ProcStat => s !== null);
    if (left.length === 0) return;
    if (Date.now() > deadline) {
      throw new Error(
        `processes still present after ${ms} ms: ${
          left.map((s) => `${s.pid} (state ${s.state}, parent ${s.ppid})`).join(", ")
        }`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
