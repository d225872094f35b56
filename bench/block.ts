/**
 * `deno task bench:block`: block migration between two real ferries on loopback: a
 * 1 GiB disk image, half of it random data and half zeroes (sparse), plus 256 MiB of
 * random RAM, migrated with blk at unlimited bandwidth, without and with the
 * zero_blocks capability. Prints GB/s of guest state moved (RAM + disk) per second
 * of migration, wire bytes and downtime.
 *
 *   deno task bench:block [-- --runs 3] [-- --disk-size 1G] [-- --ram 256M]
 */
import { parseArgs } from "node:util";
import { FerryProcess } from "../testing/ferry_process.ts";
import { parseSize } from "../vm/ram.ts";
import { median } from "./stats.ts";

const UNLIMITED = 100_000_000_000;
const MIB = 1 << 20;

/** A sparse image whose even chunks hold random data (half-empty). */
async function halfEmptyImage(path: string, size: number): Promise<void> {
  using file = await Deno.open(path, { create: true, write: true, truncate: true });
  await file.truncate(size);
  const data = new Uint8Array(MIB);
  for (let off = 0; off < MIB; off += 65536) {
    crypto.getRandomValues(data.subarray(off, off + 65536));
  }
  for (let c = 0; c < size / MIB; c += 2) {
    new DataView(data.buffer).setUint32(0, c); // every chunk different
    await file.seek(c * MIB, Deno.SeekMode.Start);
    let n = 0;
    while (n < MIB) n += await file.write(data.subarray(n));
  }
}

interface Run {
  totalS: number;
  downtimeMs: number;
  wire: number;
  diskWire: number;
  state: number;
}

async function runOnce(dir: string, ram: string, diskSize: number, zero: boolean): Promise<Run> {
  await using src = await FerryProcess.start([
    "--ram",
    ram,
    "--fill",
    "random",
    "--paused",
    "--disk",
    `${dir}/src.img`,
  ]);
  await using dst = await FerryProcess.destination(ram, "tcp:127.0.0.1:0", [
    "--disk",
    `${dir}/dst.img`,
    "--disk-size",
    String(diskSize),
  ]);
  await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED });
  await src.api("PUT", "/migrations/capabilities", { zero_blocks: zero });
  const started = await src.api("POST", "/migrations", { uri: dst.incoming, blk: true });
  if (started.status !== 202) throw new Error(JSON.stringify(started.body));
  const info = await src.waitFor(
    "/migrations/current",
    (b) => ["completed", "failed", "cancelled"].includes(b.status),
    300_000,
  );
  if (info.status !== "completed") throw new Error(JSON.stringify(info));
  await dst.waitFor("/migrations/incoming", (b) => b.status === "completed");
  const a = (await src.api("GET", "/vm/disk/digest")).body.sha256;
  const b = (await dst.api("GET", "/vm/disk/digest")).body.sha256;
  if (a !== b) throw new Error("disk digests differ");
  await Deno.remove(`${dir}/dst.img`);
  await Deno.remove(`${dir}/dst.img.ferry-dirty`).catch(() => {});
  return {
    totalS: info.total_time / 1000,
    downtimeMs: info.downtime,
    wire: info.ram.transferred + info.disk.transferred,
    diskWire: info.disk.transferred,
    state: info.ram.total + info.disk.total,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
    options: {
      runs: { type: "string", default: "3" },
      "disk-size": { type: "string", default: "1G" },
      ram: { type: "string", default: "256M" },
    },
  });
  const runs = Number(values.runs);
  const diskSize = parseSize(values["disk-size"]);
  const dir = await Deno.makeTempDir({ prefix: "ferry-bench-block-" });
  try {
    await halfEmptyImage(`${dir}/src.img`, diskSize);
    console.log(
      `block migration: ${
        values["disk-size"]
      } disk (half random, half zero) + ${values.ram} random RAM, tcp, unlimited, ${runs} runs (median)`,
    );
    for (const zero of [false, true]) {
      const results: Run[] = [];
      for (let i = 0; i < runs; i++) results.push(await runOnce(dir, values.ram, diskSize, zero));
      const t = median(results.map((r) => r.totalS));
      const r = results[0];
      console.log(
        `  zero_blocks=${zero ? "on " : "off"}: ${t.toFixed(2)} s, ${
          (r.state / t / 1e9).toFixed(2)
        } GB/s of guest state, ${(r.wire / t / 1e9).toFixed(2)} GB/s on the wire; wire ${
          (r.wire / MIB).toFixed(0)
        } MiB (disk ${(r.diskWire / MIB).toFixed(0)} MiB); downtime ${
          median(results.map((x) => x.downtimeMs)).toFixed(1)
        } ms`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
