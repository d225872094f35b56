/**
 * `deno task demo`: starts two ferries on loopback, migrates a 256 MiB guest that
 * keeps dirtying memory, draws a live progress line from the source's SSE stream,
 * prints the final statistics and compares the RAM digests of both guests.
 * Exits 0 only when the digests match.
 *
 * `deno task demo --guest x86` does the same with Linux running under v86 (128 MiB,
 * needs `deno task guest:image`), then shows the guest carrying on at the
 * destination: its console's tick chain unbroken across both ends, and its shell
 * answering `echo $((6*7))`. Exits 0 only when the digests match and the chain holds.
 */
import { parseArgs } from "node:util";
import { followConsole } from "../testing/console_follower.ts";
import { FerryProcess } from "../testing/ferry_process.ts";
import { readSse } from "../tools/sse.ts";
import type { ConsoleLog } from "../vm/x86/console_log.ts";
import { guestImagePresent } from "../vm/x86/guest_image.ts";
import { formatTick, parseTicks, type Tick, tickChainError } from "../vm/x86/ticks.ts";

const MiB = 1 << 20;

const HELP = `Usage: deno task demo [-- --guest x86]

Two ferries on 127.0.0.1 migrate a running guest live and compare RAM digests.

  --guest synthetic   a 256 MiB guest dirtying 16 MB/s (the default)
  --guest x86         Linux under v86 (128 MiB; needs deno task guest:image): the
                      destination's console carries on the source's tick chain and
                      its shell answers echo $((6*7))
  -h, --help          this text`;

/** Hang guard for an emulated boot (seconds to tens of seconds; more on a busy machine). */
const BOOT_GUARD_MS = 600_000;
/** Hang guard for the guest to print a few more lines. */
const LINES_GUARD_MS = 300_000;
/** Hang guard for an x86 ferry to start (it loads the guest image first). */
const START_GUARD_MS = 120_000;

function bar(fraction: number, width = 30): string {
  const filled = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return "#".repeat(filled) + "-".repeat(width - filled);
}

/** Settles like `promise`, or rejects naming `what` after `ms` (a hang guard, not a speed test). */
async function guard<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts a migration from `src` to `dst` and draws its progress from the source's
 * event stream until it ends; prints the statistics (and, with `warnings`, what
 * the migration warned about); returns the source's final info (null when refused).
 */
async function migrateWithProgress(
  src: FerryProcess,
  dst: FerryProcess,
  opts: { warnings: boolean },
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  const events = await src.fetch("/migrations/events");
  const started = await src.api("POST", "/migrations", { uri: dst.incoming });
  if (started.status !== 202) {
    await events.body?.cancel().catch(() => {});
    console.error(`ferry demo: migration refused: ${JSON.stringify(started.body)}`);
    return null;
  }
  const params = (await src.api("GET", "/migrations/parameters")).body;
  console.log(
    `  POST /migrations {"uri":"${dst.incoming}"} → ${started.status}, max_bandwidth ${
      params.max_bandwidth / MiB
    } MiB/s\n`,
  );
  let best = 0;
  for await (const ev of readSse(events.body!)) {
    const data = JSON.parse(ev.data);
    if (ev.event === "progress") {
      const ram = data.info.ram;
      const done = ram.total > 0 ? Math.min(1, ram.transferred / ram.total) : 0;
      best = Math.max(best, done);
      Deno.stdout.writeSync(new TextEncoder().encode(
        `\r  [${bar(best)}] ${(ram.transferred / MiB).toFixed(0).padStart(4)} MiB sent, ` +
          `${(ram.remaining / MiB).toFixed(1).padStart(6)} MiB dirty, ${
            ram.mbps.toFixed(0).padStart(5)
          } Mbit/s, ` +
          `pass ${ram.dirty_sync_count}   `,
      ));
    } else if (ev.event === "state") {
      if (["completed", "failed", "cancelled"].includes(data.to)) break;
    }
  }
  await events.body?.cancel().catch(() => {});
  const info = (await src.api("GET", "/migrations/current")).body;
  await dst.waitFor(
    "/migrations/incoming",
    (b) => b.status !== "active" && b.status !== "listening",
  );
  console.log(
    `\n\n  status          ${info.status}${info.error_desc ? ` (${info.error_desc})` : ""}`,
  );
  console.log(`  total time      ${info.total_time} ms (setup ${info.setup_time} ms)`);
  console.log(`  downtime        ${info.downtime} ms (limit ${params.downtime_limit} ms)`);
  if (info.ram) {
    console.log(`  transferred     ${(info.ram.transferred / MiB).toFixed(1)} MiB`);
    console.log(`  pages           ${info.ram.normal} normal, ${info.ram.duplicate} zero`);
    console.log(`  dirty syncs     ${info.ram.dirty_sync_count}`);
  }
  if (opts.warnings) {
    for (const w of info.warnings ?? []) console.log(`  warning         ${w.message}`);
  }
  return info;
}

/** Prints both ends' RAM digests; true when they are equal. */
async function compareDigests(src: FerryProcess, dst: FerryProcess): Promise<boolean> {
  const a = (await src.api("GET", "/vm/ram/digest")).body;
  const b = (await dst.api("GET", "/vm/ram/digest")).body;
  console.log(`  source RAM      sha256 ${a.sha256} (${a.run_state})`);
  console.log(`  destination RAM sha256 ${b.sha256} (${b.run_state})`);
  return a.sha256 === b.sha256;
}

/** The synthetic demo: a 256 MiB guest dirtying 16 MB/s. */
async function syntheticDemo(): Promise<number> {
  console.log("ferry demo: starting a destination and a source ferry on 127.0.0.1 …");
  await using dst = await FerryProcess.destination("256M");
  await using src = await FerryProcess.start([
    "--ram",
    "256M",
    "--fill",
    "pattern",
    "--workload",
    "random:rate=16M,hot=10%:90%",
  ]);
  console.log(`  source      ${src.url}  (256 MiB guest dirtying 16 MB/s)`);
  console.log(`  destination ${dst.url}  (waiting on ${dst.incoming})`);
  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 128 * MiB,
    downtime_limit: 50,
  });
  const info = await migrateWithProgress(src, dst, { warnings: false });
  if (!info) return 1;
  const same = await compareDigests(src, dst);
  const ok = info.status === "completed" && same;
  console.log(
    ok ? "\n  digests match: the guest arrived byte for byte." : "\n  MISMATCH: the demo failed.",
  );
  return ok ? 0 : 1;
}

/** Resolves with the log's ticks once it holds one numbered at least `n`. */
function ticksReaching(log: ConsoleLog, n: number): Promise<Tick[]> {
  return log.waitFor((text) => {
    const ticks = parseTicks(text);
    return (ticks.at(-1)?.n ?? 0) >= n && ticks;
  });
}

/** Starts an x86 ferry with 128 MiB; `extra` adds flags. */
function x86Ferry(extra: string[] = []): Promise<FerryProcess> {
  return FerryProcess.start(["--guest", "x86", "--ram", "128M", ...extra], {}, {
    startTimeoutMs: START_GUARD_MS,
  });
}

/**
 * The x86 demo: Linux boots in the source; the destination stays paused after
 * loading, so both ends are stopped when their digests are compared; then it is
 * started and its console is shown carrying on.
 */
async function x86Demo(): Promise<number> {
  if (!guestImagePresent()) {
    console.error("ferry demo: no x86 guest image in .cache/guest/: run deno task guest:image");
    return 1;
  }
  console.log("ferry demo (x86): booting Linux under v86 in a source ferry on 127.0.0.1 …");
  const booting = performance.now();
  await using src = await x86Ferry();
  await using srcConsole = await followConsole(src);
  const first = await guard(
    ticksReaching(srcConsole.log, 3),
    BOOT_GUARD_MS,
    "the source guest's third tick",
  );
  console.log(
    `  source      ${src.url}  (x86 guest, 128 MiB, ticking after ${
      ((performance.now() - booting) / 1000).toFixed(1)
    } s: ${formatTick(first.at(-1)!)})`,
  );
  await using dst = await x86Ferry(["--incoming", "tcp:127.0.0.1:0", "--no-autostart"]);
  console.log(`  destination ${dst.url}  (waiting on ${dst.incoming}, paused after loading)`);
  await src.api("PATCH", "/migrations/parameters", {
    max_bandwidth: 128 * MiB,
    downtime_limit: 300,
  });
  const info = await migrateWithProgress(src, dst, { warnings: true });
  if (!info) return 1;
  if (info.status !== "completed") {
    console.log("\n  MIGRATION FAILED: the demo failed.");
    return 1;
  }
  const digestsMatch = await compareDigests(src, dst);
  console.log(
    digestsMatch
      ? "  digests match: the guest arrived byte for byte."
      : "  MISMATCH: the RAM digests differ.",
  );

  // The source's whole console history, now that it has stopped: the first event replays it.
  await using srcHistory = await followConsole(src);
  const srcTicks = await guard(
    srcHistory.log.waitFor((text) => text.length > 0 && parseTicks(text)),
    LINES_GUARD_MS,
    "the source's console history",
  );
  const last = srcTicks.at(-1)!;
  const started = await dst.api("POST", "/vm/start");
  console.log(`\n  POST /vm/start on the destination → ${started.status}`);
  await using dstConsole = await followConsole(dst);
  const dstTicks = await guard(
    ticksReaching(dstConsole.log, last.n + 3),
    LINES_GUARD_MS,
    "three ticks on the destination",
  );
  const after = dstTicks.filter((t) => t.n > last.n);
  console.log("  the source's last ticks:");
  for (const t of srcTicks.slice(-3)) console.log(`    ${formatTick(t)}`);
  console.log("  the destination's next ticks:");
  for (const t of after.slice(0, 3)) console.log(`    ${formatTick(t)}`);
  const chainError = tickChainError([...srcTicks, ...after]);
  console.log(
    chainError === null
      ? `  tick chain: unbroken from tick ${srcTicks[0].n} to tick ${
        after.at(-1)!.n
      } across both ends`
      : `  TICK CHAIN BROKEN: ${chainError}`,
  );

  const from = dstConsole.log.text.length;
  const question = "echo $((6*7))\n";
  const typed = await dst.api("POST", "/vm/console", { input: question });
  console.log(`\n  POST /vm/console {"input":${JSON.stringify(question)}} → ${typed.status}`);
  const answer = await guard(
    dstConsole.log.waitFor((text) => /(^|\n)(42)\r?\n/.exec(text.slice(from))?.[2]),
    LINES_GUARD_MS,
    "the destination shell's answer",
  );
  console.log(`  the destination's shell answers: ${answer}`);

  const ok = digestsMatch && chainError === null;
  console.log(
    ok
      ? "\n  the guest arrived byte for byte and carries on where it left off."
      : "\n  the demo failed.",
  );
  return ok ? 0 : 1;
}

async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: args.filter((a, i) => !(a === "--" && i === 0)),
      options: {
        guest: { type: "string", default: "synthetic" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`ferry demo: ${(e as Error).message.split("\n")[0]} (see --help)`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.guest === "x86") return await x86Demo();
  if (values.guest === "synthetic") return await syntheticDemo();
  console.error(`ferry demo: unknown --guest "${values.guest}": expected synthetic or x86`);
  return 2;
}

Deno.exit(await main(Deno.args));
