/**
 * The platform floor for a bulk migration: the least work any Deno program does to
 * move a guest's RAM in ferry's stream framing, with none of ferry's migration code
 * in it (the guest RAM, its random fill and its digest are ferry's own). Two
 * processes: the sender copies every page of a random-filled SharedArrayBuffer
 * behind an 8-byte record header into 4 MiB buffers and writes them (two buffers,
 * queued writes — as ferry's StreamWriter does); the receiver reads into a 4 MiB
 * buffer, checks each header and copies each page into its own prefaulted
 * SharedArrayBuffer, then acknowledges with one byte. The time is from the
 * sender's connect to that acknowledgement. Over unix the sender raises its send
 * buffer as ferry does (transports/send_buffer.ts; `--default-sndbuf` keeps the
 * kernel's). `deno task bench` prints it beside ferry's figure, so a target below
 * the floor shows as such.
 *
 *   deno run -A bench/pipe_floor.ts [--ram 1073741824] [--transport tcp|unix] [--runs 3] [--default-sndbuf]
 * @module
 */
import { parseArgs } from "node:util";
import { openSockets, raiseSendBuffer } from "../transports/send_buffer.ts";
import { digestBlocks } from "../vm/digest.ts";
import { fillRam } from "../vm/fill.ts";
import { RamBlock } from "../vm/ram.ts";
import { median } from "./stats.ts";

const PAGE = 4096;
const RECORD = 8 + PAGE;
const BUFFER = 4 << 20;
/** QEMU's RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE, the flags of a bulk page record. */
const PAGE_CONTINUE = 0x08 | 0x20;

/** One floor run's outcome. */
export interface FloorRun {
  /** Connect → the receiver's acknowledgement, seconds. */
  readonly seconds: number;
  /** Pages the receiver applied. */
  readonly pages: number;
  /** SHA-256 of the sender's and the receiver's RAM (hex) when asked for, else "". */
  readonly sentDigest: string;
  readonly receivedDigest: string;
}

/** Options of {@link runPipeFloor}. */
export interface FloorOptions {
  readonly ramBytes: number;
  readonly transport: "tcp" | "unix";
  /** Hash both RAMs afterwards (slow for large guests; for tests). */
  readonly digest?: boolean;
  /** Keep the kernel's default unix send buffer instead of raising it as ferry does. */
  readonly defaultSendBuffer?: boolean;
}

/** Runs one floor transfer between two fresh Deno processes and returns what it measured. */
export async function runPipeFloor(opts: FloorOptions): Promise<FloorRun> {
  const dir = opts.transport === "unix"
    ? await Deno.makeTempDir({ prefix: "ferry-floor-" })
    : undefined;
  const self = new URL(import.meta.url).pathname;
  const common = ["--ram", String(opts.ramBytes), ...(opts.digest ? ["--digest"] : [])];
  const spawn = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", self, ...args, ...common],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
  const listen = dir ? `unix:${dir}/floor.sock` : "tcp:127.0.0.1:0";
  const receiver = spawn(["recv", "--listen", listen]);
  try {
    const lines = receiver.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("pipe floor receiver exited before listening");
      text += value;
    }
    const address = /^listening (\S+)/.exec(text)?.[1];
    if (!address) throw new Error(`pipe floor receiver said: ${text}`);
    const sender = await spawn([
      "send",
      "--connect",
      address,
      ...(opts.defaultSendBuffer ? ["--default-sndbuf"] : []),
    ]).output();
    if (!sender.success) throw new Error("pipe floor sender failed");
    const sent = JSON.parse(new TextDecoder().decode(sender.stdout));
    while (!text.includes("}\n")) {
      const { value, done } = await lines.read();
      if (done) break;
      text += value;
    }
    lines.releaseLock();
    const received = JSON.parse(text.slice(text.indexOf("{")));
    return {
      seconds: sent.seconds,
      pages: received.pages,
      sentDigest: sent.digest,
      receivedDigest: received.digest,
    };
  } finally {
    try {
      receiver.kill();
    } catch { /* already exited */ }
    await receiver.status;
    if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** SHA-256 (hex) of a floor guest's RAM, through the same digest ferry's API uses. */
async function sha256(block: RamBlock): Promise<string> {
  return (await digestBlocks([block])).blocks[0].sha256;
}

async function receive(ramBytes: number, listen: string, digest: boolean): Promise<void> {
  const block = new RamBlock("pc.ram", ramBytes);
  const ram = block.bytes;
  ram.fill(1); // prefault, as a ferry destination's guest RAM is
  const listener = listen.startsWith("unix:")
    ? Deno.listen({ transport: "unix", path: listen.slice(5) })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const addr = listener.addr as Deno.NetAddr;
  console.log(`listening ${listen.startsWith("unix:") ? listen : `tcp:127.0.0.1:${addr.port}`}`);
  using conn = await listener.accept();
  listener.close();
  const buf = new Uint8Array(BUFFER);
  let fill = 0;
  let pages = 0;
  const total = ramBytes / PAGE;
  while (pages < total) {
    const n = await conn.read(buf.subarray(fill));
    if (n === null) throw new Error(`stream ended after ${pages} of ${total} pages`);
    fill += n;
    let pos = 0;
    while (fill - pos >= RECORD) {
      const hi = (buf[pos] << 24 | buf[pos + 1] << 16 | buf[pos + 2] << 8 | buf[pos + 3]) >>> 0;
      const lo = (buf[pos + 4] << 24 | buf[pos + 5] << 16 | buf[pos + 6] << 8 | buf[pos + 7]) >>>
        0;
      const addr = hi * 2 ** 32 + ((lo & ~0xfff) >>> 0);
      if ((lo & 0xfff) !== PAGE_CONTINUE || addr + PAGE > ramBytes) {
        throw new Error(`bad record header at page ${pages}`);
      }
      ram.set(buf.subarray(pos + 8, pos + RECORD), addr);
      pos += RECORD;
      pages++;
    }
    buf.copyWithin(0, pos, fill);
    fill -= pos;
  }
  await conn.write(new Uint8Array([1]));
  console.log(JSON.stringify({ pages, digest: digest ? await sha256(block) : "" }));
}

async function send(
  ramBytes: number,
  connect: string,
  digest: boolean,
  noRaise: boolean,
): Promise<void> {
  // The guest ferry's bulk scenarios migrate: `--fill random`.
  const block = new RamBlock("pc.ram", ramBytes);
  fillRam(block, "random");
  const ram = block.bytes;
  const t0 = performance.now();
  const before = openSockets();
  using conn = connect.startsWith("unix:")
    ? await Deno.connect({ transport: "unix", path: connect.slice(5) })
    : await Deno.connect({ hostname: "127.0.0.1", port: Number(connect.split(":").at(-1)) });
  // As ferry's unix transport does.
  if (!noRaise && conn.remoteAddr.transport === "unix") {
    raiseSendBuffer(conn.remoteAddr.path, before);
  }
  const bufs = [new Uint8Array(BUFFER), new Uint8Array(BUFFER)];
  const pending: (Promise<void> | null)[] = [null, null];
  let tail: Promise<void> = Promise.resolve();
  const writeAll = async (chunk: Uint8Array) => {
    for (let off = 0; off < chunk.length;) off += await conn.write(chunk.subarray(off));
  };
  const pages = ramBytes / PAGE;
  let page = 0;
  for (let cur = 0; page < pages; cur ^= 1) {
    await pending[cur];
    const b = bufs[cur];
    let pos = 0;
    for (; pos + RECORD <= BUFFER && page < pages; page++, pos += RECORD) {
      const off = page * PAGE;
      const hi = Math.floor(off / 2 ** 32);
      const lo = (off % 2 ** 32 | PAGE_CONTINUE) >>> 0;
      b[pos] = hi >>> 24;
      b[pos + 1] = hi >>> 16;
      b[pos + 2] = hi >>> 8;
      b[pos + 3] = hi;
      b[pos + 4] = lo >>> 24;
      b[pos + 5] = lo >>> 16;
      b[pos + 6] = lo >>> 8;
      b[pos + 7] = lo;
      b.set(ram.subarray(off, off + PAGE), pos + 8);
    }
    const chunk = b.subarray(0, pos);
    pending[cur] = tail = tail.then(() => writeAll(chunk));
  }
  await tail;
  const ack = new Uint8Array(1);
  if (await conn.read(ack) !== 1) throw new Error("receiver closed without acknowledging");
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ seconds, digest: digest ? await sha256(block) : "" }));
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      ram: { type: "string", default: String(1 << 30) },
      transport: { type: "string", default: "tcp" },
      runs: { type: "string", default: "3" },
      listen: { type: "string" },
      connect: { type: "string" },
      digest: { type: "boolean", default: false },
      "default-sndbuf": { type: "boolean", default: false },
    },
  });
  const ramBytes = Number(values.ram);
  if (!(ramBytes > 0) || ramBytes % PAGE !== 0) throw new Error("--ram: a multiple of 4096");
  if (positionals[0] === "recv") await receive(ramBytes, values.listen!, values.digest);
  else if (positionals[0] === "send") {
    await send(ramBytes, values.connect!, values.digest, values["default-sndbuf"]);
  } else {
    const transport = values.transport === "unix" ? "unix" : "tcp";
    const times: number[] = [];
    for (let i = 0; i < Number(values.runs); i++) {
      const defaultSendBuffer = values["default-sndbuf"];
      times.push((await runPipeFloor({ ramBytes, transport, defaultSendBuffer })).seconds);
    }
    console.log(
      `pipe floor, ${ramBytes} bytes over ${transport}: median ${median(times).toFixed(3)} s ` +
        `(runs: ${times.map((t) => t.toFixed(3)).join(", ")})`,
    );
  }
}
