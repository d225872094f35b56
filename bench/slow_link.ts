/**
 * `deno task bench:link`: live migration over emulated 1 and 10 Gbit/s, 5 ms (one-way)
 * links between two network namespaces, to see whether ferry's bandwidth estimate
 * (`ram.mbps`, Mbit/s) and its downtime stay honest when the wire, not the CPU, is
 * the limit, and how ferry compares with QEMU at its best over the same link.
 *
 *   deno run -A bench/slow_link.ts [--runs N] [--ram 1G] [--workload random:rate=50M]
 *       [--rate 1g,10g] [--data random,image] [--image PATH]
 *       [--qemu-configs all|best|none|a,b] [--downtime-only] [--tls] [--compress none|zstd|lz4] [--multifd N]
 *       [--relay]   (skip netem, use the fallback)
 *
 * Needs root (`ip netns`, `tc`). Topology:
 *
 *   root namespace                         namespace ferry-dst
 *   source ferry (API 127.0.0.1)           destination ferry (API 10.203.0.2, FERRY_TOKEN)
 *        │                                      ▲
 *        └─► [delay relay 127.0.0.1:X] ─► ferry-v0 ══ veth ══ ferry-v1 ─► incoming port
 *            10.203.0.1/24                                    10.203.0.2/24
 *
 * The link: `tc qdisc … netem delay 5ms rate 1gbit` on both veth ends' egress when
 * the kernel has netem (then there is no relay: the source connects to 10.203.0.2
 * directly). Without netem: `tbf rate 1gbit` on both ends for the rate, and a
 * userspace delay line ({@link DelayRelay}, bench/delay_relay.ts) adding 5 ms to
 * each direction of the migration connection. The namespace, veth pair and qdiscs
 * are created here and removed at the end — also on error, SIGINT and SIGTERM — and
 * leftovers of an earlier crashed run are removed first.
 *
 * Scenario: a 1 GiB guest filled with random bytes, dirtying 50 MB/s of it, migrated
 * (1) unlimited, downtime limit 300 ms, (2) max_bandwidth 100 MB/s, 300 ms,
 * (3) unlimited, 30 ms. Each row: total time, bytes, passes, ferry's bandwidth
 * estimate against the link's 1 Gbit/s and against what the destination really
 * received, expected vs measured downtime vs the limit, and whether both guests' RAM
 * digests match. The link's goodput is measured first with a plain 256 MiB transfer.
 * With `--tls`, the cases are (1) in plaintext and over TLS with the migration secret
 * (certificates made with openssl by testing/certs.ts), to show what TLS costs on a
 * real link; with `--downtime-only`, case (3) alone. `--data image` starts both
 * engines from a real guest's RAM image (bench/ram_image.ts) instead of random bytes.
 *
 * QEMU runs every case too, in each of its candidate configurations
 * (bench/qemu/configs.ts), after ferry's run of the case: its destination under
 * `ip netns exec` in the same namespace, its source here, through the same delay
 * relay and shaping, with the same RAM and QEMU's guest dirtying at the workload's
 * rate. The tables compare ferry's wall clock (request → destination completed),
 * total time and downtime with QEMU's best candidate's.
 */
import { parseArgs } from "node:util";
import { makeTestPki, SERVER_NAME, type TestPki } from "../testing/certs.ts";
import { DelayRelay, type DelayRelayStats } from "./delay_relay.ts";
import { FerryProcess } from "../testing/ferry_process.ts";
import { qemuAvailable, runQemu } from "./qemu/mod.ts";
import type { GuestWorkload, MigrationRun, ScenarioSpec } from "./qemu/types.ts";
import {
  type CandidateSummary,
  parseQemuConfigs,
  type QemuConfig,
  rankCandidates,
  withConfig,
} from "./qemu/configs.ts";
import { candidatesRows, fmt, markdownTable, roundOrder, side } from "./compare.ts";
import { parseWorkload } from "../vm/workload.ts";
import { parseSize } from "../vm/ram.ts";

const NS = "ferry-dst";
const VETH_ROOT = "ferry-v0";
const VETH_NS = "ferry-v1";
const ROOT_IP = "10.203.0.1";
const NS_IP = "10.203.0.2";
const UNLIMITED = 100e9;
const MIB = 1 << 20;
/** Share of a full 1514-byte frame on the veth (MTU 1500) that is TCP payload (1448 bytes). */
const WIRE_PAYLOAD = 1448 / 1514;

/** One migration of the scenario. */
export interface SlowLinkCase {
  /** Label in the table. */
  name: string;
  /** max_bandwidth, bytes/s. */
  maxBandwidth: number;
  /** downtime_limit, ms. */
  downtimeLimit: number;
  /** TLS with the migration secret, from these certificates (`--tls`); else plaintext. */
  tls?: TestPki;
}

/** Options of {@link runSlowLinkBenchmark}; all optional. */
export interface SlowLinkOptions {
  /** Repetitions of every case (default 1). */
  runs?: number;
  /** Guest RAM (default `1G`; keep ≤ 1G on a shared 2-core machine). */
  ram?: string;
  /** Source workload (default `random:rate=50M`). */
  workload?: string;
  /** The cases (default: unlimited/300 ms, 100 MB/s/300 ms, unlimited/30 ms). */
  cases?: SlowLinkCase[];
  /** Link rate, bits/s (default 1e9); `rates` runs several links one after the other. */
  rateBits?: number;
  /** Link rates to run, bits/s, each on a freshly built link (default `[rateBits]`). */
  rates?: number[];
  /** Guest RAM contents to run on (default random bytes). */
  data?: LinkData[];
  /**
   * QEMU's candidate configurations to run beside ferry in the same namespaces over
   * the same link (bench/qemu/configs.ts); empty or absent: ferry only.
   */
  qemuConfigs?: readonly QemuConfig[];
  /** One-way delay, ms (default 5). */
  delayMs?: number;
  /** Bytes of the plain goodput transfer (default 256 MiB; 0 skips it). */
  probeBytes?: number;
  /** Use the tbf + relay fallback even when netem exists. */
  forceRelay?: boolean;
  /** ferry's compress_method on both ends (default `none`); QEMU's is among its candidates. */
  compress?: "none" | "zstd" | "lz4";
  /** ferry's multifd_channels on both ends (default 1). */
  multifd?: number;
  /** Longest one migration may take before it is cancelled, ms (default 180 s). */
  timeoutMs?: number;
  /** Where progress and tables go (default console.log). */
  log?: (line: string) => void;
}

/** What the guest's RAM holds: random bytes, or a real guest's RAM image (bench/ram_image.ts). */
export type LinkData = { readonly kind: "random" } | {
  readonly kind: "image";
  readonly path: string;
};

/** How the link was emulated. */
export interface LinkEmulation {
  /** `netem` (delay and rate in the kernel) or `tbf+relay`. */
  kind: "netem" | "tbf+relay";
  /** Why, in words (e.g. netem's error message). */
  reason: string;
  /** Link rate, bits/s. */
  rateBits: number;
  /** One-way delay, ms. */
  delayMs: number;
  /** The relay's in-flight bound per direction, bytes (tbf+relay only). */
  relayMaxInFlight?: number;
}

/** A plain transfer over the link. */
export interface LinkProbe {
  /** `relay` (through the delay line and tbf) or `direct` (the veth path alone). */
  path: string;
  bytes: number;
  seconds: number;
  /** Goodput, bytes/s. */
  goodput: number;
  /** Round trip of a 1-byte ping over the same path, ms. */
  rttMs: number;
}

/** One sample of the source's progress (and the destination's received bytes). */
export interface LinkSample {
  /** ms since POST /migrations. */
  t: number;
  status: string;
  pass: number;
  /** ferry's estimate, Mbit/s. */
  mbps: number;
  remaining: number;
  transferred: number;
  expectedDowntime: number | undefined;
  /** Bytes (layer 2, headers included) sent so far on the source's veth end. */
  wire: number;
  /** ms since POST /migrations when `wire` was read. */
  wireT: number;
}

/** The outcome of one migration. */
export interface SlowLinkRow {
  case: SlowLinkCase;
  run: number;
  status: string;
  error?: string;
  totalTimeMs: number;
  transferred: number;
  passes: number;
  /** Median of the per-window estimates while active, Mbit/s. */
  estimateMedianMbps: number;
  /** The completed migration's average (bytes on the wire / total time), Mbit/s. */
  estimateFinalMbps: number;
  /**
   * What really crossed the link per second while active, Mbit/s: the source's veth
   * end's tx_bytes (layer 2, headers included — what tbf/netem meter).
   */
  wireMbps: number;
  /**
   * Median over the active samples of estimate ÷ (payload rate on the wire since the
   * previous sample, ≈ one 100 ms window): above 1 the estimate is optimistic.
   */
  estOverWire: number;
  /** The last expected_downtime reported before switchover, ms. */
  expectedDowntimeMs: number | undefined;
  /** ferry's downtime (guest stopped → destination confirmed), ms. */
  downtimeMs: number | undefined;
  /** Source runstate → finish-migrate to destination incoming → completed, by event times, ms. */
  eventDowntimeMs: number | undefined;
  digestsMatch: boolean;
  /** POST /migrations → the destination's `incoming` event `completed`, ms (as read here). */
  wallMs: number;
  /** The warnings the source gave (e.g. downtime-limit-exceeded with where the time went). */
  warnings: { code: string; message: string }[];
  samples: LinkSample[];
  relay?: DelayRelayStats;
}

/** One QEMU migration over the link. */
export interface QemuLinkRow {
  case: SlowLinkCase;
  run: number;
  config: QemuConfig;
  result: MigrationRun;
}

/** What one link (one rate, one kind of RAM contents) measured. */
export interface LinkResult {
  emulation: LinkEmulation;
  data: LinkData;
  probes: LinkProbe[];
  rows: SlowLinkRow[];
  qemu: QemuLinkRow[];
}

/** Everything {@link runSlowLinkBenchmark} measured, one entry per rate and RAM contents. */
export interface SlowLinkResult {
  links: LinkResult[];
}

const DEFAULT_CASES: SlowLinkCase[] = [
  { name: "unlimited, 300 ms", maxBandwidth: UNLIMITED, downtimeLimit: 300 },
  { name: "100 MB/s, 300 ms", maxBandwidth: 100e6, downtimeLimit: 300 },
  { name: "unlimited, 30 ms", maxBandwidth: UNLIMITED, downtimeLimit: 30 },
];

// ---------------------------------------------------------------------------
// The link: namespace, veth pair, qdiscs

async function run(cmd: string[], check = true): Promise<{ ok: boolean; out: string }> {
  const res = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const out = (dec.decode(res.stdout) + dec.decode(res.stderr)).trim();
  if (check && !res.success) throw new Error(`${cmd.join(" ")} failed: ${out}`);
  return { ok: res.success, out };
}

/** Removes the namespace and veth pair of an earlier run, killing what still runs inside. */
async function removeLink(log: (s: string) => void, quiet: boolean): Promise<void> {
  const pids = await run(["ip", "netns", "pids", NS], false);
  if (pids.ok) {
    for (const pid of pids.out.split(/\s+/).filter((p) => /^\d+$/.test(p))) {
      if (!quiet) log(`slow_link: killing leftover process ${pid} in namespace ${NS}`);
      try {
        Deno.kill(Number(pid), "SIGKILL");
      } catch {
        // gone already
      }
    }
    const del = await run(["ip", "netns", "del", NS], false);
    if (!quiet && del.ok) log(`slow_link: removed leftover namespace ${NS}`);
  }
  // Deleting the namespace deletes ferry-v1 and with it its peer; this covers a
  // run that crashed between creating the pair and moving one end.
  const link = await run(["ip", "link", "del", VETH_ROOT], false);
  if (!quiet && link.ok) log(`slow_link: removed leftover link ${VETH_ROOT}`);
}

async function createLink(
  rateBits: number,
  delayMs: number,
  forceRelay: boolean,
): Promise<LinkEmulation> {
  await run(["ip", "netns", "add", NS]);
  await run(["ip", "link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_NS, "netns", NS]);
  await run(["ip", "addr", "add", `${ROOT_IP}/24`, "dev", VETH_ROOT]);
  await run(["ip", "link", "set", VETH_ROOT, "up"]);
  await run(["ip", "-n", NS, "addr", "add", `${NS_IP}/24`, "dev", VETH_NS]);
  await run(["ip", "-n", NS, "link", "set", VETH_NS, "up"]);
  await run(["ip", "-n", NS, "link", "set", "lo", "up"]);
  const rate = `${rateBits / 1e6}mbit`;
  // Room for two bandwidth-delay products of 1500-byte packets.
  const limit = String(Math.max(1000, Math.ceil((4 * rateBits / 8 * delayMs / 1000) / 1500)));
  let reason = "--relay given: netem not tried";
  if (!forceRelay) {
    const netem = ["root", "netem", "delay", `${delayMs}ms`, "rate", rate, "limit", limit];
    const a = await run(["tc", "qdisc", "add", "dev", VETH_ROOT, ...netem], false);
    if (a.ok) {
      await run(["tc", "-n", NS, "qdisc", "add", "dev", VETH_NS, ...netem]);
      return {
        kind: "netem",
        reason: "the kernel has the netem qdisc",
        rateBits,
        delayMs,
      };
    }
    reason = `netem unavailable (tc: "${a.out.split("\n")[0]}")`;
  }
  // tbf: the bucket must hold at least one 64 KiB GSO super-packet and a timer
  // tick's worth of the rate (1 ms: 1.25 MB at 10 Gbit/s); its queue (latency)
  // holds 20 ms of the rate.
  const burst = `${Math.max(128, Math.ceil(rateBits / 8 / 1000 / 1024))}kb`;
  const tbf = ["root", "tbf", "rate", rate, "burst", burst, "latency", "20ms"];
  await run(["tc", "qdisc", "add", "dev", VETH_ROOT, ...tbf]);
  await run(["tc", "-n", NS, "qdisc", "add", "dev", VETH_NS, ...tbf]);
  return {
    kind: "tbf+relay",
    reason,
    rateBits,
    delayMs,
    relayMaxInFlight: Math.ceil(2 * (rateBits / 8) * (delayMs / 1000)),
  };
}

/** Bytes sent so far on the root end of the veth pair (after the qdisc). */
async function txBytes(): Promise<number> {
  const text = await Deno.readTextFile(`/sys/class/net/${VETH_ROOT}/statistics/tx_bytes`);
  return Number(text.trim());
}

// ---------------------------------------------------------------------------
// The plain transfer (goodput and RTT of the link)

/** A sink/echo server run inside the namespace: prints its port, then serves. */
const SINK = `
const l = Deno.listen({ hostname: "${NS_IP}", port: 0 });
console.log(l.addr.port);
for await (const c of l) {
  (async () => {
    c.setNoDelay(true);
    const buf = new Uint8Array(1 << 20);
    const mode = new Uint8Array(1);
    if ((await c.read(mode)) === null) return c.close();
    if (mode[0] === 0x65) { // 'e': echo every byte back
      for (;;) { const n = await c.read(buf); if (n === null) break; await c.write(buf.subarray(0, n)); }
    } else { // 's': count until EOF, answer with the count
      let total = 0;
      for (;;) { const n = await c.read(buf); if (n === null) break; total += n; }
      const out = new Uint8Array(8); new DataView(out.buffer).setFloat64(0, total);
      await c.write(out);
    }
    c.close();
  })().catch(() => {});
}
`;

/**
 * The client side of the plain transfer, run as its own process (so that it does
 * not compete with the relay for this process's event loop, as the source ferry
 * does not either). Args: host, port, bytes. Prints `{"seconds", "rttMs"}`.
 */
const PROBE_CLIENT = `
const [hostname, portText, bytesText] = Deno.args;
const port = Number(portText), bytes = Number(bytesText);
const writeAll = async (c, b) => { for (let o = 0; o < b.length;) o += await c.write(b.subarray(o)); };
const readExactly = async (c, n) => {
  const out = new Uint8Array(n);
  for (let o = 0; o < n;) { const r = await c.read(out.subarray(o)); if (r === null) throw new Error("closed early"); o += r; }
  return out;
};
let rttMs = Infinity;
const echo = await Deno.connect({ hostname, port });
echo.setNoDelay(true);
await writeAll(echo, new Uint8Array([0x65]));
for (let i = 0; i < 10; i++) {
  const t = performance.now();
  await writeAll(echo, new Uint8Array([i]));
  await readExactly(echo, 1);
  rttMs = Math.min(rttMs, performance.now() - t);
}
echo.close();
const conn = await Deno.connect({ hostname, port });
const MIB = 1 << 20;
/** Share of a full 1514-byte frame on the veth (MTU 1500) that is TCP payload (1448 bytes). */
const WIRE_PAYLOAD = 1448 / 1514;
const chunk = new Uint8Array(MIB);
crypto.getRandomValues(chunk.subarray(0, 65536));
for (let o = 65536; o < MIB; o += 65536) chunk.copyWithin(o, 0, 65536);
const t0 = performance.now();
await writeAll(conn, new Uint8Array([0x73]));
for (let sent = 0; sent < bytes; sent += MIB) await writeAll(conn, chunk.subarray(0, Math.min(MIB, bytes - sent)));
await conn.closeWrite();
const answer = await readExactly(conn, 8);
// The answer travels back over the link: take one one-way trip off.
const seconds = (performance.now() - t0 - rttMs / 2) / 1000;
conn.close();
const got = new DataView(answer.buffer).getFloat64(0);
if (got !== bytes) throw new Error("sink received " + got + " of " + bytes + " bytes");
console.log(JSON.stringify({ seconds, rttMs }));
`;

async function probe(
  path: string,
  host: string,
  port: number,
  bytes: number,
  res: Resources,
): Promise<LinkProbe> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", PROBE_CLIENT, host, String(port), String(bytes)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  res.children.add(child);
  try {
    const out = await child.output();
    const dec = new TextDecoder();
    if (!out.success) throw new Error(`plain transfer failed: ${dec.decode(out.stderr).trim()}`);
    const { seconds, rttMs } = JSON.parse(dec.decode(out.stdout));
    return { path, bytes, seconds, goodput: bytes / seconds, rttMs };
  } finally {
    res.children.delete(child);
  }
}

// ---------------------------------------------------------------------------
// Events (for the downtime as the two ferries saw it)

interface TimedEvent {
  event: string;
  // deno-lint-ignore no-explicit-any
  data: any;
  /** performance.now() when this process read it. */
  at: number;
}

/** Reads `GET /migrations/events` of `ferry` into `out` until `signal` aborts. */
async function collectEvents(
  ferry: FerryProcess,
  out: TimedEvent[],
  signal: AbortSignal,
): Promise<void> {
  // An aborted fetch does not always end a body read already waiting: stop waiting at the abort.
  const aborted = new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
  await Promise.race([readEvents(ferry, out, signal), aborted]);
}

async function readEvents(
  ferry: FerryProcess,
  out: TimedEvent[],
  signal: AbortSignal,
): Promise<void> {
  try {
    const res = await ferry.fetch("/migrations/events", { signal });
    if (!res.body) return;
    let buf = "";
    for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (data) out.push({ event, data: JSON.parse(data), at: performance.now() });
      }
    }
  } catch {
    // aborted
  }
}

// ---------------------------------------------------------------------------
// One migration

/** Everything started for a run, so that a signal handler can tear it down. */
class Resources {
  readonly ferries = new Set<FerryProcess>();
  readonly relays = new Set<DelayRelay>();
  readonly children = new Set<Deno.ChildProcess>();

  async release(): Promise<void> {
    await Promise.all([...this.relays].map((r) => r.close()));
    await Promise.all([...this.ferries].map((f) => f.kill("SIGKILL")));
    for (const c of this.children) {
      try {
        c.kill("SIGKILL");
      } catch {
        // exited
      }
    }
    await Promise.all([...this.children].map((c) => c.status));
    this.relays.clear();
    this.ferries.clear();
    this.children.clear();
  }
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function migrateOnce(
  c: SlowLinkCase,
  runIndex: number,
  emu: LinkEmulation,
  opts:
    & Required<Pick<SlowLinkOptions, "ram" | "workload" | "timeoutMs" | "compress" | "multifd">>
    & {
      data: LinkData;
    },
  res: Resources,
): Promise<SlowLinkRow> {
  // What ferry's two ends start with (--param): compression and multifd, when asked.
  const compress = [
    ...(opts.compress === "none" ? [] : ["--param", `compress_method=${opts.compress}`]),
    ...(opts.multifd === 1 ? [] : ["--param", `multifd_channels=${opts.multifd}`]),
  ];
  const token = crypto.randomUUID();
  const tls = c.tls;
  const dst = await FerryProcess.destination(
    opts.ram,
    `tcp:${NS_IP}:0`,
    tls
      ? [
        "--listen",
        `${NS_IP}:0`,
        "--tls-cert",
        tls.server.cert,
        "--tls-key",
        tls.server.key,
        "--migration-secret",
        tls.secret,
      ]
      // A private namespace link: plaintext on its non-loopback address is what is measured.
      : ["--listen", `${NS_IP}:0`, "--insecure-migration", ...compress],
    { prefix: ["ip", "netns", "exec", NS], token },
  );
  res.ferries.add(dst);
  const src = await FerryProcess.start([
    "--ram",
    opts.ram,
    "--fill",
    opts.data.kind === "image" ? `image:${opts.data.path}` : "random",
    "--workload",
    opts.workload,
    ...compress,
  ]);
  res.ferries.add(src);
  let relay: DelayRelay | undefined;
  const stop = new AbortController();
  const events = { src: [] as TimedEvent[], dst: [] as TimedEvent[] };
  const readers = [
    collectEvents(src, events.src, stop.signal),
    collectEvents(dst, events.dst, stop.signal),
  ];
  try {
    let uri = dst.incoming;
    if (emu.kind === "tbf+relay") {
      const port = Number(/:(\d+)$/.exec(dst.incoming)![1]);
      relay = DelayRelay.start({
        target: { hostname: NS_IP, port },
        delayMs: emu.delayMs,
        maxInFlight: emu.relayMaxInFlight!,
      });
      res.relays.add(relay);
      uri = `tcp:127.0.0.1:${relay.addr.port}`;
    }
    const set = await src.api("PATCH", "/migrations/parameters", {
      max_bandwidth: c.maxBandwidth,
      downtime_limit: c.downtimeLimit,
      ...(tls ? { tls_ca: tls.ca, tls_hostname: SERVER_NAME, migration_secret: tls.secret } : {}),
    });
    if (set.status !== 200) throw new Error(`PATCH parameters: ${JSON.stringify(set.body)}`);
    await new Promise((r) => setTimeout(r, 200)); // let the event streams connect
    const t0 = performance.now();
    const started = await src.api("POST", "/migrations", { uri });
    if (started.status !== 202) {
      throw new Error(`POST /migrations: ${JSON.stringify(started.body)}`);
    }
    const samples: LinkSample[] = [];
    // deno-lint-ignore no-explicit-any
    let info: any;
    for (;;) {
      const wire = await txBytes();
      const wireT = performance.now() - t0;
      const s = await src.api("GET", "/migrations/current");
      info = s.body;
      samples.push({
        t: performance.now() - t0,
        status: info.status,
        pass: info.ram?.dirty_sync_count ?? 0,
        mbps: info.ram?.mbps ?? 0,
        remaining: info.ram?.remaining ?? 0,
        transferred: info.ram?.transferred ?? 0,
        expectedDowntime: info.expected_downtime,
        wire,
        wireT,
      });
      if (["completed", "failed", "cancelled"].includes(info.status)) break;
      if (performance.now() - t0 > opts.timeoutMs) {
        await src.api("DELETE", "/migrations/current");
        info = await src.waitFor(
          "/migrations/current",
          (b) => ["failed", "cancelled", "completed"].includes(b.status),
        );
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    let digestsMatch = false;
    if (info.status === "completed") {
      await dst.waitFor("/migrations/incoming", (b) => b.status === "completed", 30_000);
      const [a, b] = await Promise.all([
        src.api("GET", "/vm/ram/digest"),
        dst.api("GET", "/vm/ram/digest"),
      ]);
      digestsMatch = typeof a.body?.sha256 === "string" && a.body.sha256 === b.body?.sha256;
    }
    await new Promise((r) => setTimeout(r, 100)); // last events
    const stopAt = events.src.find((e) => e.event === "runstate" && e.data.to === "finish-migrate")
      ?.data.time;
    const loaded = events.dst.find((e) => e.event === "incoming" && e.data.to === "completed");
    const loadedAt = loaded?.data.time;
    const active = samples.filter((s) => s.status === "active" && s.mbps > 0);
    const lastActive = active.at(-1);
    const firstActive = active[0];
    const wireMbps = lastActive && firstActive && lastActive.t > firstActive.t
      ? ((lastActive.wire - firstActive.wire) * 8 / 1e6) /
        ((lastActive.wireT - firstActive.wireT) / 1000)
      : NaN;
    const row: SlowLinkRow = {
      case: c,
      run: runIndex,
      status: info.status,
      totalTimeMs: info.total_time ?? NaN,
      transferred: info.ram?.transferred ?? 0,
      passes: info.ram?.dirty_sync_count ?? 0,
      estimateMedianMbps: median(active.map((s) => s.mbps)),
      estimateFinalMbps: info.ram?.mbps ?? NaN,
      wireMbps,
      estOverWire: median(
        samples.flatMap((s, i) => {
          const p = samples[i - 1];
          if (!p || s.status !== "active" || !(s.mbps > 0) || s.wireT <= p.wireT) return [];
          const payload = ((s.wire - p.wire) * WIRE_PAYLOAD * 8 / 1e6) /
            ((s.wireT - p.wireT) / 1000);
          return payload > 0 ? [s.mbps / payload] : [];
        }),
      ),
      expectedDowntimeMs: [...samples].reverse().find((s) =>
        s.status === "active" && s.expectedDowntime !== undefined && s.expectedDowntime >= 0
      )?.expectedDowntime,
      downtimeMs: info.downtime,
      eventDowntimeMs: stopAt !== undefined && loadedAt !== undefined
        ? loadedAt - stopAt
        : undefined,
      digestsMatch,
      wallMs: loaded ? loaded.at - t0 : NaN,
      warnings: (info.warnings ?? []).map((w: { code: string; message: string }) => ({
        code: w.code,
        message: w.message,
      })),
      samples,
    };
    if (info.error_desc) row.error = info.error_desc;
    if (relay) row.relay = relay.stats();
    return row;
  } finally {
    stop.abort();
    await Promise.all(readers);
    if (relay) {
      await relay.close();
      res.relays.delete(relay);
    }
    await src.kill("SIGKILL");
    await dst.kill("SIGKILL");
    res.ferries.delete(src);
    res.ferries.delete(dst);
  }
}

// ---------------------------------------------------------------------------
// Output

const f1 = (x: number | undefined) => x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1);
const f0 = (x: number | undefined) => x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(0);

/** A compact timeline: one line per second of the run, plus the last sample. */
function timeline(row: SlowLinkRow): string[] {
  const out: string[] = [];
  let nextT = 0;
  let prev: LinkSample | undefined;
  const samples = row.samples;
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i];
    const last = i === samples.length - 1;
    if (s.t < nextT && !last) continue;
    const rx = prev && s.t > prev.t
      ? ((s.wire - prev.wire) * 8 / 1e6) / ((s.wireT - prev.wireT) / 1000)
      : NaN;
    out.push(
      `  ${(s.t / 1000).toFixed(1).padStart(5)} s  ${s.status.padEnd(9)} pass ${
        String(s.pass).padStart(3)
      }  est ${f0(s.mbps).padStart(5)} Mbit/s  wire ${f0(rx).padStart(5)} Mbit/s  remaining ${
        f1(s.remaining / MIB).padStart(7)
      } MiB  expected downtime ${
        s.expectedDowntime === undefined ? "–" : f0(s.expectedDowntime)
      } ms`,
    );
    prev = s;
    nextT = s.t + 1000;
  }
  return out;
}

// ---------------------------------------------------------------------------
// The benchmark

/** The QEMU guest workload that matches ferry's `--workload` text (random → dirty at its rate). */
export function qemuWorkload(text: string): GuestWorkload {
  const w = parseWorkload(text);
  switch (w.kind) {
    case "idle":
      return { kind: "idle" };
    case "random":
      return { kind: "dirty", bytesPerSecond: w.rate };
    case "ab":
      if (w.range === null) throw new RangeError(`QEMU needs ab's range: ${text}`);
      return { kind: "ab", rangeBytes: w.range };
  }
}

/** Parses `--rate`: comma-separated rates such as `1g,10g` or `1e9` (bits/s). */
export function parseRates(text: string): number[] {
  return text.split(",").map((t) => {
    const m = /^(\d+(?:\.\d+)?(?:e\d+)?)([kmg]?)(?:bit)?$/i.exec(t.trim());
    if (!m) throw new RangeError(`--rate: "${t}" is not a rate (e.g. 1g, 10g, 500m, 1e9)`);
    const r = Number(m[1]) * ({ "": 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase()] ?? 1);
    if (!(r >= 1e6)) throw new RangeError(`--rate: ${t} is below 1 Mbit/s`);
    return r;
  });
}

/** A ferry row as the engine-neutral run the comparison tables take. */
export function ferryRun(row: SlowLinkRow): MigrationRun {
  return {
    completed: row.status === "completed",
    totalS: row.totalTimeMs / 1000,
    downtimeMs: row.downtimeMs ?? NaN,
    bytes: row.transferred,
    passes: row.passes,
    bandwidthBps: row.estimateFinalMbps * 1e6 / 8,
    peakRssSrc: NaN,
    peakRssDst: NaN,
    wallS: row.wallMs / 1000,
  };
}

/** Measures the link's goodput with plain transfers (the relay path and the bare veth path). */
async function probeLink(
  emulation: LinkEmulation,
  probeBytes: number,
  res: Resources,
  log: (s: string) => void,
): Promise<LinkProbe[]> {
  const { rateBits, delayMs } = emulation;
  const probes: LinkProbe[] = [];
  if (probeBytes <= 0) return probes;
  const sink = new Deno.Command("ip", {
    args: ["netns", "exec", NS, Deno.execPath(), "eval", SINK],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  res.children.add(sink);
  try {
    const reader = sink.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const first = await reader.read();
    reader.releaseLock();
    const port = Number(first.value?.trim());
    if (!port) throw new Error(`sink did not start: ${first.value}`);
    const paths: string[] = [];
    if (emulation.kind === "tbf+relay") paths.push("relay", "direct");
    else paths.push("direct");
    for (const path of paths) {
      let relay: DelayRelay | undefined;
      try {
        let p = port;
        if (path === "relay") {
          relay = DelayRelay.start({
            target: { hostname: NS_IP, port },
            delayMs,
            maxInFlight: emulation.relayMaxInFlight!,
          });
          res.relays.add(relay);
          p = relay.addr.port;
        }
        const host = path === "direct" ? NS_IP : "127.0.0.1";
        const r = await probe(path, host, p, probeBytes, res);
        probes.push(r);
        log(
          `slow_link: plain transfer, ${path} path: ${probeBytes / MIB} MiB in ${
            r.seconds.toFixed(2)
          } s = ${(r.goodput / 1e6).toFixed(1)} MB/s (${f0(r.goodput * 8 / 1e6)} Mbit/s, ${
            (r.goodput * 8 / rateBits * 100).toFixed(1)
          } % of the link); ` +
            `ping RTT ${r.rttMs.toFixed(1)} ms`,
        );
      } finally {
        if (relay) {
          await relay.close();
          res.relays.delete(relay);
        }
      }
    }
    await sink.stdout.cancel().catch(() => {});
  } finally {
    try {
      sink.kill("SIGKILL");
    } catch {
      // exited
    }
    await sink.status;
    res.children.delete(sink);
  }
  return probes;
}

/**
 * One QEMU migration of case `c` over the link: the destination QEMU runs in the
 * namespace (`ip netns exec`), the source here, through the same relay and tbf as
 * ferry's; RAM and workload as ferry's (random fill or the image, the random
 * workload as QEMU's dirtying guest).
 */
async function qemuOnce(
  c: SlowLinkCase,
  config: QemuConfig,
  emu: LinkEmulation,
  opts: { ram: string; workload: string; timeoutMs: number; data: LinkData },
  res: Resources,
): Promise<MigrationRun> {
  const ramBytes = opts.data.kind === "image"
    ? (await Deno.stat(opts.data.path)).size
    : parseSize(opts.ram);
  const spec: ScenarioSpec = withConfig({
    ramBytes,
    fill: "random",
    ...(opts.data.kind === "image" ? { image: opts.data.path } : {}),
    workload: qemuWorkload(opts.workload),
    transport: "tcp",
    maxBandwidth: c.maxBandwidth,
    downtimeLimitMs: c.downtimeLimit,
    timeoutS: opts.timeoutMs / 1000,
    wall: true,
  }, config);
  return await runQemu(spec, {
    network: {
      destinationPrefix: ["ip", "netns", "exec", NS],
      listenHost: NS_IP,
      route: (port) => {
        if (emu.kind !== "tbf+relay") {
          return Promise.resolve({ uri: `tcp:${NS_IP}:${port}`, close: () => Promise.resolve() });
        }
        const relay = DelayRelay.start({
          target: { hostname: NS_IP, port },
          delayMs: emu.delayMs,
          maxInFlight: emu.relayMaxInFlight!,
        });
        res.relays.add(relay);
        return Promise.resolve({
          uri: `tcp:127.0.0.1:${relay.addr.port}`,
          close: async () => {
            await relay.close();
            res.relays.delete(relay);
          },
        });
      },
    },
  });
}

const dataName = (d: LinkData) => d.kind === "image" ? `image ${d.path}` : "random bytes";

/**
 * Builds the emulated link for each rate, measures its goodput, runs every case
 * `runs` times on ferry and on each QEMU candidate (alternated: ferry, then the
 * candidates in turn) for each kind of RAM contents, and prints a timeline per
 * ferry migration and summary tables (through `opts.log`). Needs root. The link is
 * removed before it returns or throws; while it runs, SIGINT and SIGTERM tear
 * everything down and exit (130 / 143).
 */
export async function runSlowLinkBenchmark(opts: SlowLinkOptions = {}): Promise<SlowLinkResult> {
  const log = opts.log ?? console.log;
  const runs = opts.runs ?? 1;
  const rates = opts.rates ?? [opts.rateBits ?? 1e9];
  const delayMs = opts.delayMs ?? 5;
  const probeBytes = opts.probeBytes ?? 256 * MIB;
  const cases = opts.cases ?? DEFAULT_CASES;
  const datas = opts.data ?? [{ kind: "random" }];
  const qemuConfigs = opts.qemuConfigs ?? [];
  const mOpts = {
    ram: opts.ram ?? "1G",
    workload: opts.workload ?? "random:rate=50M",
    timeoutMs: opts.timeoutMs ?? 180_000,
    compress: opts.compress ?? "none",
    multifd: opts.multifd ?? 1,
  };
  if (Deno.uid?.() !== 0) throw new Error("slow_link needs root (ip netns, tc)");
  if (qemuConfigs.length) {
    const q = await qemuAvailable();
    if (q !== true) throw new Error(`slow_link: QEMU cannot run here: ${q.skipped}`);
    qemuWorkload(mOpts.workload); // refuse a workload QEMU's guest cannot play before any run
  }

  const res = new Resources();
  let tearingDown: Promise<void> | undefined;
  const teardown = () =>
    tearingDown ??= (async () => {
      await res.release();
      await removeLink(log, true);
    })();
  const onSignal = (signal: Deno.Signal, code: number) => () => {
    log(`slow_link: ${signal}: removing the namespace and link`);
    teardown().finally(() => Deno.exit(code));
  };
  const handlers: [Deno.Signal, () => void][] = [
    ["SIGINT", onSignal("SIGINT", 130)],
    ["SIGTERM", onSignal("SIGTERM", 143)],
  ];
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);

  const links: LinkResult[] = [];
  try {
    for (const rateBits of rates) {
      await removeLink(log, links.length > 0);
      const emulation = await createLink(rateBits, delayMs, opts.forceRelay ?? false);
      const linkMBs = rateBits / 8 / 1e6;
      log(
        emulation.kind === "netem"
          ? `\nslow_link: link emulation: netem delay ${delayMs}ms rate ${
            rateBits / 1e6
          }mbit on both ` +
            `veth ends (${emulation.reason})`
          : `\nslow_link: link emulation: tbf rate ${rateBits / 1e6}mbit on both veth ends + ` +
            `userspace delay relay (+${delayMs} ms each way, ≤ ${
              (emulation.relayMaxInFlight! / 1e6).toFixed(2)
            } MB in flight per direction = 2 × bandwidth-delay product), because ${emulation.reason}. ` +
            `The relay splits the TCP connection: ACKs are not delayed, application round trips are.`,
      );
      log(
        `slow_link: ${ROOT_IP} (root, source) ⇄ ${NS_IP} (namespace ${NS}, destination); ` +
          `link rate ${rateBits / 1e6} Mbit/s = ${linkMBs} MB/s`,
      );
      const probes = await probeLink(emulation, probeBytes, res, log);
      for (const data of datas) {
        const link: LinkResult = { emulation, data, probes, rows: [], qemu: [] };
        links.push(link);
        for (let r = 0; r < runs; r++) {
          for (const c of cases) {
            log(
              `\nslow_link: ${rateBits / 1e9} Gbit/s, ${
                data.kind === "image" ? "the image's size" : mOpts.ram
              } guest, ${
                dataName(data)
              }, --workload ${mOpts.workload}, ferry compress_method ${mOpts.compress}, multifd_channels ${mOpts.multifd}: ${c.name}` +
                (runs > 1 ? ` (run ${r + 1}/${runs})` : ""),
            );
            const row = await migrateOnce(c, r, emulation, { ...mOpts, data }, res);
            link.rows.push(row);
            for (const line of timeline(row)) log(line);
            log(
              `  → ferry ${row.status}${row.error ? ` (${row.error})` : ""}; wall ${
                f0(row.wallMs)
              } ms; downtime ${f1(row.downtimeMs)} ms (events: ${
                f0(row.eventDowntimeMs)
              } ms), expected ${f0(row.expectedDowntimeMs)} ms, limit ${c.downtimeLimit} ms; ` +
                `digests ${row.digestsMatch ? "match" : "DIFFER"}` +
                (row.relay
                  ? `; relay peak ${
                    (row.relay.peakInFlight / 1e6).toFixed(2)
                  } MB in flight, ${row.relay.pauses} read pauses`
                  : ""),
            );
            for (const w of row.warnings) log(`    warning ${w.code}: ${w.message}`);
            for (const k of roundOrder(r, qemuConfigs.length)) {
              const config = qemuConfigs[k];
              const result = await qemuOnce(c, config, emulation, { ...mOpts, data }, res);
              link.qemu.push({ case: c, run: r, config, result });
              log(
                `  → QEMU ${config.name}: ${result.completed ? "completed" : "not completed"}` +
                  `; wall ${fmt.s(result.wallS ?? NaN)}, total ${fmt.s(result.totalS)}, ` +
                  `downtime ${fmt.ms(result.downtimeMs)}, ${result.passes} passes` +
                  (result.note ? ` (${result.note})` : ""),
              );
            }
          }
        }
        printLink(link, runs, log);
        if (qemuConfigs.length) printComparison(link, qemuConfigs, log);
      }
    }
    return { links };
  } finally {
    await teardown();
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
    log("slow_link: namespace, veth pair and qdiscs removed");
  }
}

/** ferry's table for one link: the bandwidth estimate against the wire, the downtime. */
function printLink(link: LinkResult, runs: number, log: (s: string) => void): void {
  const { rateBits } = link.emulation;
  const linkMBs = rateBits / 8 / 1e6;
  // The link's achievable goodput: the best plain transfer (the relay path can only
  // be slower than the veth path it runs over, when the relay lacks CPU).
  const goodput = link.probes.reduce<LinkProbe | undefined>(
    (best, p) => (!best || p.goodput > best.goodput ? p : best),
    undefined,
  );
  log(
    `\nslow_link: ferry on ${dataName(link.data)} — link ${
      rateBits / 1e6
    } Mbit/s (${linkMBs} MB/s)` +
      (goodput
        ? `, measured goodput ${f0(goodput.goodput * 8 / 1e6)} Mbit/s (${goodput.path} path)`
        : "") +
      `; ${link.emulation.kind}. est = ferry's ram.mbps (Mbit/s, stream bytes); wire = layer-2 ` +
      `bytes/s on the source's veth end while active (what the shaper meters; TCP/IP ` +
      `headers included; est/wire payload = median per ~100 ms sample of est ÷ (wire × 1448/1514)); goodput = the plain transfer's payload rate; downtime = ferry's ` +
      `(guest stopped → destination confirmed); event downtime = source stop event → ` +
      `destination loaded event\n`,
  );
  log(markdownTable(
    [
      "case",
      "status",
      "wall s",
      "total s",
      "MiB sent",
      "passes",
      "est. Mbit/s (median)",
      "avg Mbit/s",
      "wire Mbit/s",
      "est/link",
      "est/goodput",
      "est/wire payload",
      "exp. downtime ms",
      "downtime ms",
      "event downtime ms",
      "limit ms",
      "≤ limit",
      "digests",
    ],
    link.rows.map((row) => [
      row.case.name + (runs > 1 ? ` #${row.run + 1}` : ""),
      row.status,
      f1(row.wallMs / 1000),
      f1(row.totalTimeMs / 1000),
      f0(row.transferred / MIB),
      String(row.passes),
      f0(row.estimateMedianMbps),
      f0(row.estimateFinalMbps),
      f0(row.wireMbps),
      (row.estimateMedianMbps / (rateBits / 1e6)).toFixed(2),
      goodput ? (row.estimateMedianMbps / (goodput.goodput * 8 / 1e6)).toFixed(2) : "–",
      row.estOverWire.toFixed(2),
      f0(row.expectedDowntimeMs),
      f1(row.downtimeMs),
      f0(row.eventDowntimeMs),
      String(row.case.downtimeLimit),
      row.downtimeMs !== undefined && row.downtimeMs <= row.case.downtimeLimit ? "yes" : "NO",
      row.digestsMatch ? "match" : "DIFFER",
    ]),
  ));
}

/** ferry against QEMU's best candidate on one link, per case, and every candidate's wall. */
function printComparison(
  link: LinkResult,
  configs: readonly QemuConfig[],
  log: (s: string) => void,
): void {
  const perCase: { scenario: string; candidates: CandidateSummary[] }[] = [];
  const rows: string[][] = [];
  const cases = [...new Set(link.rows.map((r) => r.case))];
  for (const c of cases) {
    const ferry = link.rows.filter((r) => r.case === c).map(ferryRun);
    const byConfig = new Map(
      configs.map((k) => [
        k,
        link.qemu.filter((q) => q.case === c && q.config === k).map((q) => q.result),
      ]),
    );
    const ranked = rankCandidates(byConfig);
    perCase.push({ scenario: c.name, candidates: ranked });
    const f = side(ferry, c.downtimeLimit);
    const best = ranked[0];
    const q = best ? side(best.runs, c.downtimeLimit) : undefined;
    rows.push([
      c.name,
      f.wall,
      f.total,
      f.downtime,
      f.withinLimit,
      best?.config.name ?? "—",
      q?.wall ?? "—",
      q?.total ?? "—",
      q?.downtime ?? "—",
      q?.withinLimit ?? "—",
      `**${fmt.ratio(f.medianS, q?.medianS ?? NaN)}**`,
    ]);
  }
  log(
    `\nslow_link: ferry against QEMU at its best — ${link.emulation.rateBits / 1e9} Gbit/s, ${
      dataName(link.data)
    }; the same namespaces, shaping and relay. Both guests ` +
      "run (QEMU's TCG vCPU competes with the senders for the two cores). wall = the " +
      "migrate request → the destination reports completed; medians (min–max).\n",
  );
  log(markdownTable([
    "case",
    "ferry wall",
    "ferry total",
    "ferry downtime",
    "≤ limit",
    "QEMU best",
    "QEMU wall",
    "QEMU total",
    "QEMU downtime",
    "≤ limit",
    "ferry/Q",
  ], rows));
  log("\nQEMU's candidates, median wall; the best of each row in bold:\n");
  log(markdownTable(["case", ...configs.map((c) => c.name)], candidatesRows(perCase, configs)));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      runs: { type: "string", default: "1" },
      ram: { type: "string", default: "1G" },
      workload: { type: "string", default: "random:rate=50M" },
      relay: { type: "boolean", default: false },
      "probe-mib": { type: "string", default: "256" },
      tls: { type: "boolean", default: false },
      rate: { type: "string", default: "1g,10g" },
      data: { type: "string", default: "random,image" },
      image: { type: "string" },
      "qemu-configs": { type: "string", default: "all" },
      "downtime-only": { type: "boolean", default: false },
      compress: { type: "string", default: "none" },
      multifd: { type: "string", default: "1" },
    },
  });
  if (!["none", "zstd", "lz4"].includes(values.compress)) {
    console.error(`slow_link: bad --compress ${values.compress} (none, zstd or lz4)`);
    Deno.exit(2);
  }
  if (!/^([1-9]|1[0-6])$/.test(values.multifd)) {
    console.error(`slow_link: bad --multifd ${values.multifd} (1 to 16)`);
    Deno.exit(2);
  }
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) {
    console.error(`slow_link: bad --runs ${values.runs}`);
    Deno.exit(2);
  }
  let rates: number[];
  let qemuConfigs: QemuConfig[];
  let data: LinkData[];
  try {
    rates = parseRates(values.rate);
    qemuConfigs = values["qemu-configs"] === "none" ? [] : parseQemuConfigs(values["qemu-configs"]);
    const image = values.image ??
      new URL("../.cache/x86-ram/real-1g.img", import.meta.url).pathname;
    data = values.data.split(",").map((d): LinkData => {
      if (d === "random") return { kind: "random" };
      if (d === "image") {
        try {
          Deno.statSync(image);
        } catch {
          throw new RangeError(
            `--data image: no image at ${image} (deno task bench:image makes it)`,
          );
        }
        return { kind: "image", path: image };
      }
      throw new RangeError(`--data: "${d}" is neither random nor image`);
    });
  } catch (e) {
    console.error(`slow_link: ${(e as Error).message}`);
    Deno.exit(2);
  }
  // --tls: the unlimited 300 ms case in plaintext and over TLS with the migration secret.
  await using pki = values.tls ? await makeTestPki() : undefined;
  const cases = pki
    ? [
      { ...DEFAULT_CASES[0], name: "unlimited, 300 ms, plain" },
      { ...DEFAULT_CASES[0], name: "unlimited, 300 ms, TLS", tls: pki },
    ]
    : values["downtime-only"]
    ? [DEFAULT_CASES[2]]
    : undefined;
  try {
    await runSlowLinkBenchmark({
      runs,
      ram: values.ram,
      workload: values.workload,
      forceRelay: values.relay,
      probeBytes: Number(values["probe-mib"]) * MIB,
      rates,
      data,
      qemuConfigs,
      compress: values.compress as "none" | "zstd" | "lz4",
      multifd: Number(values.multifd),
      ...(cases ? { cases } : {}),
    });
  } catch (e) {
    console.error(`slow_link: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
