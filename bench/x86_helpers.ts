/**
 * The pure parts of bench/x86.ts: the busy guest's shell commands, reading the
 * downtime breakdown out of a `downtime-limit-exceeded` warning, and summarising
 * samples as a median with its range.
 * @module
 */
import { median } from "./stats.ts";

/** Where a migration's downtime went, ms, as its `downtime-limit-exceeded` warning says. */
export interface DowntimeBreakdown {
  /** Stopping the guest. */
  readonly stop: number;
  /** The final dirty-log sync (for the x86 guest: comparing all of RAM with its copy). */
  readonly finalSync: number;
  /** Sending the pages left after that sync. */
  readonly lastPages: number;
  /** Saving and sending the device state. */
  readonly deviceState: number;
  /** The end of the stream and the destination's answer (it loads devices, checks integrity). */
  readonly destination: number;
}

/** The parts of a breakdown, in the order the warning names them. */
export const BREAKDOWN_PARTS = [
  "stop",
  "finalSync",
  "lastPages",
  "deviceState",
  "destination",
] as const satisfies readonly (keyof DowntimeBreakdown)[];

const BREAKDOWN = new RegExp(
  "stopping the guest took (\\d+) ms, the final dirty-log sync (\\d+) ms, " +
    "the last pages (\\d+) ms, device state (\\d+) ms, " +
    "the end of the stream and the destination's answer (\\d+) ms",
);

/**
 * The breakdown in a `downtime-limit-exceeded` warning's message
 * (engine/outgoing.ts), or null when the message does not carry one.
 */
export function parseDowntimeBreakdown(message: string): DowntimeBreakdown | null {
  const m = BREAKDOWN.exec(message);
  if (!m) return null;
  const [stop, finalSync, lastPages, deviceState, destination] = m.slice(1).map(Number);
  return { stop, finalSync, lastPages, deviceState, destination };
}

/** The breakdown of the first `downtime-limit-exceeded` warning among `warnings`, if any. */
export function breakdownOf(
  warnings: readonly { code: string; message: string }[] | undefined,
): DowntimeBreakdown | null {
  const w = warnings?.find((x) => x.code === "downtime-limit-exceeded");
  return w ? parseDowntimeBreakdown(w.message) : null;
}

/** Line the guest prints when its random source file is ready. */
export const FILLED_LINE = "filled";
/** Line the guest prints after each pass of the rewrite loop. */
export const PASS_LINE = "pass";

/**
 * Shell lines that make the x86 guest busy: `fileMiB` (a positive multiple of 8)
 * of /dev/shm rewritten in a loop, 8 MiB of random bytes copied over it
 * `fileMiB / 8` times and then zeros, so every pass changes every page of the
 * file twice. The first line fills the 8 MiB source and prints
 * {@link FILLED_LINE}; the second starts the loop in the background, printing
 * {@link PASS_LINE} after each pass. The echoed words are split by quotes, so the
 * shell's echo of the typed line never reads as the guest's answer.
 */
export function busyCommands(fileMiB: number): [string, string] {
  if (!Number.isInteger(fileMiB) || fileMiB <= 0 || fileMiB % 8 !== 0) {
    throw new RangeError(`the busy file must be a positive multiple of 8 MiB, not ${fileMiB}`);
  }
  const quoted = (word: string) => `"${word.slice(0, 1)}""${word.slice(1)}"`;
  const offsets = Array.from({ length: fileMiB / 8 }, (_, i) => i * 8).join(" ");
  return [
    `mount -o remount,size=${fileMiB + 16}M /dev/shm; ` +
    `dd if=/dev/urandom of=/dev/shm/src bs=1M count=8 2>/dev/null; echo ${quoted(FILLED_LINE)}\n`,
    `(while :; do for o in ${offsets}; do ` +
    `dd if=/dev/shm/src of=/dev/shm/dst bs=1M seek=$o conv=notrunc 2>/dev/null; done; ` +
    `dd if=/dev/zero of=/dev/shm/dst bs=1M count=${fileMiB} conv=notrunc 2>/dev/null; ` +
    `echo ${quoted(PASS_LINE)}; done) &\n`,
  ];
}

/**
 * How many console lines of `text` (CRLF endings) end in the word `word`: the
 * line is the word, or the word follows a space (a background job's output can
 * land right after the shell's prompt).
 */
export function countLines(text: string, word: string): number {
  let n = 0;
  for (const raw of text.split("\n")) {
    const l = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (l === word || l.endsWith(` ${word}`)) n++;
  }
  return n;
}

/** `median (min–max)` of the numbers that are not NaN, each through `f`; `—` when none. */
export function spread(xs: readonly number[], f: (x: number) => string): string {
  const s = xs.filter((x) => !Number.isNaN(x));
  if (s.length === 0) return "—";
  if (s.length === 1) return f(s[0]);
  return `${f(median(s))} (${f(Math.min(...s))}–${f(Math.max(...s))})`;
}

/** Line the guest prints when the RAM image workload is done. */
export const IMAGED_LINE = "imaged";

/**
 * Shell lines that make the x86 guest's RAM look like a real guest's before its
 * RAM is saved as an image (bench/ram_image.ts), scaled to `ramMiB`: the page
 * cache (tmpfs in /dev/shm) fills with kernel and program text (kallsyms, dmesg,
 * a listing of /sys, a hex dump of busybox), a generated application log, exact
 * copies of files (duplicate pages), a tar and its gzip, and random bytes (data
 * that does not compress); programs run (awk, sort, md5sum, tar, gzip) and two
 * stay resident holding heap (awk arrays). Each line ends by echoing its step's
 * name; the last prints {@link IMAGED_LINE}. Echoed words are split by quotes.
 */
export function imageCommands(ramMiB: number): string[] {
  if (!Number.isInteger(ramMiB) || ramMiB < 64) {
    throw new RangeError(`the image guest needs whole MiB of RAM, at least 64, not ${ramMiB}`);
  }
  const quoted = (word: string) => `"${word.slice(0, 1)}""${word.slice(1)}"`;
  const logLines = Math.floor((ramMiB * 2 ** 20) / 16 / 64); // ~64-byte lines: 1/16 of RAM
  const randomMiB = Math.max(1, Math.floor(ramMiB / 32));
  const heapKeys = Math.floor(ramMiB * 256); // two awk processes, ~1/16 of RAM of heap together
  return [
    `mount -o remount,size=${Math.floor(ramMiB * 0.6)}M /dev/shm; cd /dev/shm; ` +
    `cat /proc/kallsyms > kallsyms.txt; dmesg > dmesg.txt; ls -lR /sys > sys.txt 2>/dev/null; ` +
    `hexdump -C /bin/busybox > busybox.hex; echo ${quoted("text")}\n`,
    `awk 'BEGIN { for (i = 0; i < ${logLines}; i++) printf "%09d INFO worker-%02d ` +
    `request %05x served in %d us\\n", i, i % 17, (i * 7919) % 65536, i % 997 }' ` +
    `> app.log; echo ${quoted("log")}\n`,
    `cp busybox.hex busybox.hex.bak; cp /bin/busybox busybox.copy; cp kallsyms.txt kallsyms.bak; ` +
    `tar -cf bundle.tar kallsyms.txt dmesg.txt sys.txt busybox.hex; gzip -1 -c bundle.tar > ` +
    `bundle.tar.gz; md5sum * > sums.txt; echo ${quoted("copies")}\n`,
    `dd if=/dev/urandom of=random.bin bs=1M count=${randomMiB} 2>/dev/null; ` +
    `head -c ${(Math.floor(ramMiB / 64) + 1) * 2 ** 20} app.log | sort -r > app.sorted; ` +
    `echo ${quoted("random")}\n`,
    ...[1, 2].map((n) =>
      `(awk 'BEGIN { for (i = 0; i < ${heapKeys}; i++) a[i] = sprintf("key-${n}-%d-%x", i, ` +
      `i * 2654435761); print "${quoted(`heap${n}`).replaceAll('"', "")}"; ` +
      `while (1) system("sleep 3600") }' &)\n`
    ),
    `sync; echo ${quoted(IMAGED_LINE)}\n`,
  ];
}

/** The word each of {@link imageCommands}' lines prints when it is done. */
export const IMAGE_STEPS = ["text", "log", "copies", "random", "heap1", "heap2", IMAGED_LINE];
