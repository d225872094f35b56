/**
 * Small measurement helpers the benchmarks share: order statistics of samples and
 * a process's peak resident set.
 */

/** The upper middle of the numbers that are not NaN; NaN when there are none. */
export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)];
}

/** The nearest-rank `p`-th percentile (0–100) of the numbers that are not NaN; NaN when none. */
export function percentile(xs: readonly number[], p: number): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

/** Peak resident set size of a live process (`VmHWM` in /proc), in bytes; NaN when unreadable. */
export function peakRss(pid: number): number {
  try {
    const kib = /^VmHWM:\s+(\d+)\s*kB/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1];
    return kib === undefined ? NaN : Number(kib) * 1024;
  } catch {
    return NaN;
  }
}
