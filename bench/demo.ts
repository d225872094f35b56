/**
 * `deno task demo`: starts two ferries on loopback, migrates a 256 MiB guest that
 * keeps dirtying memory, draws a live progress line from the source's SSE stream,
 * prints the final statistics and compares the RAM digests of both guests.
 * Exits 0 only when the digests match.
 */
import { FerryProcess } from "../testing/ferry_process.ts";
import { readSse } from "../tools/sse.ts";

const MiB = 1 << 20;

function bar(fraction: number, width = 30): string {
  const filled = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return "#".repeat(filled) + "-".repeat(width - filled);
}

async function main(): Promise<number> {
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
  const events = await src.fetch("/migrations/events");
  const started = await src.api("POST", "/migrations", { uri: dst.incoming });
  if (started.status !== 202) {
    console.error(`ferry demo: migration refused: ${JSON.stringify(started.body)}`);
    return 1;
  }
  console.log(
    `  POST /migrations {"uri":"${dst.incoming}"} → ${started.status}, max_bandwidth 128 MiB/s\n`,
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
  console.log(`  downtime        ${info.downtime} ms (limit 50 ms)`);
  if (info.ram) {
    console.log(`  transferred     ${(info.ram.transferred / MiB).toFixed(1)} MiB`);
    console.log(`  pages           ${info.ram.normal} normal, ${info.ram.duplicate} zero`);
    console.log(`  dirty syncs     ${info.ram.dirty_sync_count}`);
  }
  const a = (await src.api("GET", "/vm/ram/digest")).body;
  const b = (await dst.api("GET", "/vm/ram/digest")).body;
  console.log(`  source RAM      sha256 ${a.sha256} (${a.run_state})`);
  console.log(`  destination RAM sha256 ${b.sha256} (${b.run_state})`);
  const ok = info.status === "completed" && a.sha256 === b.sha256;
  console.log(
    ok ? "\n  digests match: the guest arrived byte for byte." : "\n  MISMATCH: the demo failed.",
  );
  return ok ? 0 : 1;
}

Deno.exit(await main());
