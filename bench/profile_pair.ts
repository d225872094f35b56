/**
 * Profiles one end-to-end migration between two real ferries with Linux `perf`
 * (JS frames named through V8's --perf-basic-prof):
 *
 *   deno run -A bench/profile_pair.ts [--ram 1G] [--transport tcp|unix] [--fill random|zero]
 *   perf report -i /tmp/ferry-src.perf --no-children --sort symbol | head -40
 *
 * Writes /tmp/ferry-src.perf and /tmp/ferry-dst.perf.
 */
import { parseArgs } from "node:util";
import { generateToken } from "../api_token.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ram: { type: "string", default: "1G" },
    transport: { type: "string", default: "tcp" },
    fill: { type: "string", default: "random" },
    "no-perf": { type: "boolean", default: false },
  },
});

const main = new URL("../main.ts", import.meta.url).pathname;

interface Proc {
  child: Deno.ChildProcess;
  url: Promise<string>;
  incoming: Promise<string>;
  name: string;
}

/** One API token for both ferries, given as FERRY_TOKEN. */
const token = generateToken();

function start(name: string, args: string[]): Proc {
  const deno = [Deno.execPath(), "run", "-A", "--v8-flags=--perf-basic-prof", main];
  const child = new Deno.Command(deno[0], {
    args: [...deno.slice(1), "--listen", "127.0.0.1:0", ...args],
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
    env: { FERRY_TOKEN: token },
  }).spawn();
  let resolveUrl!: (s: string) => void;
  let resolveIncoming!: (s: string) => void;
  const url = new Promise<string>((r) => resolveUrl = r);
  const incoming = new Promise<string>((r) => resolveIncoming = r);
  (async () => {
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      const u = /API on (http:\/\/\S+?)(?:\s|$)/.exec(buf);
      if (u) resolveUrl(u[1]);
      const inc = /incoming migration on (\S+)/.exec(buf);
      if (inc) resolveIncoming(inc[1]);
    }
  })();
  return { child, url, incoming, name };
}

/** Attaches `perf record` to a running ferry (only the migration gets sampled). */
function attach(p: Proc): Deno.ChildProcess {
  return new Deno.Command("perf", {
    args: ["record", "-F", "2999", "-g", "-o", `/tmp/ferry-${p.name}.perf`, "-p", `${p.child.pid}`],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
}

async function api(url: string, method: string, path: string, body?: unknown) {
  const res = await fetch(url + path, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return await res.json();
}

let dir: string | undefined;
let uri = "tcp:127.0.0.1:0";
if (values.transport === "unix") {
  dir = await Deno.makeTempDir();
  uri = `unix:${dir}/m.sock`;
}
const dst = start("dst", ["--ram", values.ram, "--incoming", uri, "--no-autostart"]);
const fill = values.fill === "zero" ? [] : ["--fill", values.fill];
const src = start("src", ["--ram", values.ram, ...fill, "--paused"]);
const [srcUrl, dstUrl, address] = await Promise.all([src.url, dst.url, dst.incoming]);
await api(srcUrl, "PATCH", "/migrations/parameters", { max_bandwidth: 100_000_000_000 });
/** utime + stime of a process in ms (from /proc, 10 ms resolution). */
function cpuMs(pid: number): number {
  const f = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}
const perfs = !values["no-perf"] ? [attach(src), attach(dst)] : [];
const cpu0 = [cpuMs(src.child.pid), cpuMs(dst.child.pid)];
await new Promise((r) => setTimeout(r, 500));
await api(srcUrl, "POST", "/migrations", { uri: address });
let info;
for (;;) {
  info = await api(srcUrl, "GET", "/migrations/current");
  if (["completed", "failed", "cancelled"].includes(info.status)) break;
  await new Promise((r) => setTimeout(r, 20));
}
for (;;) {
  const inc = await api(dstUrl, "GET", "/migrations/incoming");
  if (inc.status !== "active") break;
  await new Promise((r) => setTimeout(r, 20));
}
const cpu = [cpuMs(src.child.pid) - cpu0[0], cpuMs(dst.child.pid) - cpu0[1]];
console.log(
  info.status,
  "total_time",
  info.total_time,
  "ms; setup",
  info.setup_time,
  "ms; downtime",
  info.downtime,
  `ms; cpu src ${cpu[0]} ms, dst ${cpu[1]} ms (incl. polling)`,
);
for (const p of perfs) {
  p.kill("SIGINT");
  await p.status;
}
for (const p of [src, dst]) {
  p.child.kill("SIGINT");
  await p.child.status;
}
if (dir) await Deno.remove(dir, { recursive: true });
