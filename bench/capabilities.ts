/**
 * XBZRLE and auto-converge benchmarks (`deno task bench` runs them after the
 * migration scenarios; alone: `deno run -A bench/capabilities.ts`):
 *   - XBZRLE encode and decode GB/s on 4 KiB pages with 1 % changed bytes,
 *     and the bytes those pages cost on the wire with and without XBZRLE;
 *   - time for auto-converge to complete a migration of a guest dirtying 2x the
 *     bandwidth (two real ferries).
 */
import { xbzrleDecode, xbzrleEncode } from "../engine/format/xbzrle.ts";
import { FerryProcess } from "./ferry_process.ts";

const PAGE = 4096;
const PAGES = 16384; // 64 MiB of pages

function makePages(): { old: Uint8Array; cur: Uint8Array } {
  let x = 0x9e3779b9;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const old = new Uint8Array(PAGES * PAGE);
  const words = new Uint32Array(old.buffer);
  for (let i = 0; i < words.length; i++) words[i] = next();
  const cur = old.slice();
  for (let p = 0; p < PAGES; p++) {
    for (let k = 0; k < PAGE / 100; k++) cur[p * PAGE + (next() % PAGE)] ^= 1 + (next() % 255);
  }
  return { old, cur };
}

function codec(): void {
  const { old, cur } = makePages();
  const encoded: Uint8Array[] = [];
  const dst = new Uint8Array(PAGE);
  let wire = 0;
  let t = performance.now();
  for (let p = 0; p < PAGES; p++) {
    const o = old.subarray(p * PAGE, (p + 1) * PAGE);
    const c = cur.subarray(p * PAGE, (p + 1) * PAGE);
    const n = xbzrleEncode(o, c, dst);
    encoded.push(dst.slice(0, n));
    wire += n < 0 ? 8 + PAGE : 8 + 3 + n;
  }
  const encS = (performance.now() - t) / 1000;
  const target = old.slice();
  t = performance.now();
  for (let p = 0; p < PAGES; p++) {
    xbzrleDecode(encoded[p], target.subarray(p * PAGE, (p + 1) * PAGE));
  }
  const decS = (performance.now() - t) / 1000;
  if (!target.every((v, i) => v === cur[i])) throw new Error("XBZRLE round trip differs");
  const plain = PAGES * (8 + PAGE);
  const bytes = PAGES * PAGE;
  console.log(
    `xbzrle encode  ${(bytes / encS / 1e9).toFixed(2)} GB/s of pages (1 % bytes changed)`,
  );
  console.log(`xbzrle decode  ${(bytes / decS / 1e9).toFixed(2)} GB/s of pages`);
  console.log(
    `wire bytes     plain ${plain}, xbzrle ${wire}: ${
      (plain / wire).toFixed(1)
    }x fewer (target ≥ 10x)`,
  );
}

async function autoConverge(): Promise<void> {
  await using dst = await FerryProcess.destination("64M");
  // 64 MB/s of dirtying against a 32 MiB/s link: 2x the bandwidth.
  await using src = await FerryProcess.start([
    "--ram",
    "64M",
    "--fill",
    "random",
    "--workload",
    "random:rate=64M,bytes=8",
  ]);
  await src.api("PUT", "/migrations/capabilities", { auto_converge: true });
  await src.api("PATCH", "/migrations/parameters", { max_bandwidth: 32 << 20, downtime_limit: 30 });
  await src.api("POST", "/migrations", { uri: dst.incoming });
  let throttle = 0;
  const info = await src.waitFor("/migrations/current", (b) => {
    throttle = Math.max(throttle, b.cpu_throttle_percentage ?? 0);
    return ["completed", "failed", "cancelled"].includes(b.status);
  }, 300_000);
  console.log(
    `auto-converge  guest dirtying 2x a 32 MiB/s link: ${info.status} in ${
      (info.total_time / 1000).toFixed(1)
    } s, ${info.ram.dirty_sync_count} syncs, throttle reached ${throttle} %, downtime ${info.downtime} ms (limit 30)`,
  );
}

/** Runs both benchmarks (bench/migrate.ts calls this at the end of `deno task bench`). */
export async function runCapabilityBenchmarks(): Promise<void> {
  codec();
  await autoConverge();
}

if (import.meta.main) await runCapabilityBenchmarks();
