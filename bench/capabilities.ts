/**
 * XBZRLE and auto-converge benchmarks (`deno task bench` runs them after the
 * migration scenarios; alone: `deno run -A bench/capabilities.ts`):
 *   - XBZRLE encode and decode GB/s on 4 KiB pages with 1 % changed bytes, pure-TS
 *     and WebAssembly SIMD kernels side by side (best of RUNS runs),
 *     and the bytes those pages cost on the wire with and without XBZRLE;
 *   - time for auto-converge to complete a migration of a guest dirtying 2x the
 *     bandwidth (two real ferries).
 */
import {
  createKernels,
  KernelKind,
  type Kernels,
  WASM_SIMD_SUPPORTED,
} from "../engine/wasm/kernels.ts";
import { FerryProcess } from "../testing/ferry_process.ts";

const PAGE = 4096;
const PAGES = 16384; // 64 MiB of pages
/** Runs of each codec benchmark; the fastest counts. */
const RUNS = 5;

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

/** Best-of-N wall time of `run`, in seconds (the machine is shared: the minimum is the signal). */
function bestOf(runs: number, run: () => void, setup?: () => void): number {
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    setup?.();
    const t = performance.now();
    run();
    best = Math.min(best, performance.now() - t);
  }
  return best / 1000;
}

/** Encode/decode rates of one kernel set, done as the RAM saver and loader do them. */
function codecRates(
  kernels: Kernels,
  old: Uint8Array,
  cur: Uint8Array,
): { enc: number; dec: number; wire: number } {
  // The saver: cached pages in the kernels' arena, each dirty page snapshotted into
  // `scratch`, encoded into the stream buffer.
  const cache = kernels.arena;
  cache.set(old);
  const snap = kernels.scratch;
  const out = new Uint8Array(PAGES * (PAGE + 16));
  const lens = new Int32Array(PAGES);
  const encS = bestOf(RUNS, () => {
    for (let p = 0; p < PAGES; p++) {
      snap.set(cur.subarray(p * PAGE, (p + 1) * PAGE));
      const dst = out.subarray(p * (PAGE + 16), p * (PAGE + 16) + PAGE);
      lens[p] = kernels.xbzrleEncode(cache.subarray(p * PAGE, (p + 1) * PAGE), snap, dst);
    }
  });
  let wire = 0;
  for (let p = 0; p < PAGES; p++) wire += lens[p] < 0 ? 8 + PAGE : 8 + 3 + lens[p];
  // The loader: records from the stream buffer applied onto guest RAM (a SharedArrayBuffer).
  const target = new Uint8Array(new SharedArrayBuffer(PAGES * PAGE));
  const decS = bestOf(RUNS, () => {
    for (let p = 0; p < PAGES; p++) {
      if (lens[p] < 0) continue;
      const src = out.subarray(p * (PAGE + 16), p * (PAGE + 16) + lens[p]);
      kernels.xbzrleDecode(src, target.subarray(p * PAGE, (p + 1) * PAGE));
    }
  }, () => target.set(old));
  if (!target.every((v, i) => v === cur[i])) {
    throw new Error(`XBZRLE (${kernels.kind}) round trip differs`);
  }
  return { enc: encS, dec: decS, wire };
}

/** XBZRLE encode/decode GB/s, TS and wasm kernels side by side, and the wire bytes saved. */
export function codec(): void {
  const { old, cur } = makePages();
  const ts = codecRates(createKernels({ kind: KernelKind.TS, arenaBytes: PAGES * PAGE }), old, cur);
  const wasm = WASM_SIMD_SUPPORTED
    ? codecRates(createKernels({ kind: KernelKind.WASM, arenaBytes: PAGES * PAGE }), old, cur)
    : null;
  const plain = PAGES * (8 + PAGE);
  const bytes = PAGES * PAGE;
  const gbs = (s: number) => (bytes / s / 1e9).toFixed(2);
  const row = (what: string, t: number, w: number | undefined) =>
    console.log(
      `xbzrle ${what}  ts ${gbs(t)} GB/s, wasm ${
        w === undefined ? "n/a" : `${gbs(w)} GB/s (${(t / w).toFixed(1)}x)`
      } of pages`,
    );
  console.log(`xbzrle codec   1 % bytes changed, ${PAGES} pages, best of ${RUNS} runs`);
  row("encode", ts.enc, wasm?.enc);
  row("decode", ts.dec, wasm?.dec);
  if (wasm && wasm.wire !== ts.wire) throw new Error("XBZRLE wasm and TS encodings differ in size");
  console.log(
    `wire bytes     plain ${plain}, xbzrle ${ts.wire}: ${
      (plain / ts.wire).toFixed(1)
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
