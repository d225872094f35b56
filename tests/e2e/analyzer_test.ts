/**
 * A `file:` snapshot ferry writes parses with QEMU's own
 * `scripts/analyze-migration.py`, and the RAM the analyzer extracts equals the
 * guest's, byte for byte (the integrity record in the vmdescription included),
 * for the synthetic guest and for the x86 guest (whose running Linux zeroes pages
 * it sent earlier: the analyzer skips ZERO records, so such pages go as full pages).
 * The script is QEMU 7.2's, from Debian's source archive; `.ci/run` fetches it
 * into `.cache/` (FERRY_ANALYZER names another copy). Without it, or without
 * python3, the test is skipped.
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { guestImagePresent } from "../../vm/x86/guest_image.ts";
import { parseTicks } from "../../vm/x86/ticks.ts";
import { followConsole } from "../../testing/console_follower.ts";
import { withTimeout } from "../helpers/wait.ts";
import { sourceFinal } from "../helpers/ferries.ts";

const ANALYZER = Deno.env.get("FERRY_ANALYZER") ??
  new URL("../../.cache/qemu-7.2/analyze-migration.py", import.meta.url).pathname;

function have(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

const PYTHON = ["/usr/bin/python3", "/usr/local/bin/python3"].find(have) ??
  (new Deno.Command("sh", { args: ["-c", "command -v python3"] }).outputSync().stdout.length > 0
    ? "python3"
    : undefined);

Deno.test({
  name: "analyze-migration.py parses a ferry file: snapshot and extracts RAM equal to the guest's",
  ignore: !have(ANALYZER) || PYTHON === undefined,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "ferry-analyze-" });
    try {
      await using src = await FerryProcess.start([
        "--ram",
        "16M",
        "--fill",
        "random",
        "--workload",
        "random:rate=4M",
      ]);
      const started = await src.api("POST", "/migrations", { uri: `file:${dir}/snap` });
      assert.equal(started.status, 202, JSON.stringify(started.body));
      assert.equal((await sourceFinal(src)).status, "completed");
      // The guest is stopped (postmigrate): its RAM is what the snapshot holds.
      const ram = new Uint8Array(
        await (await src.fetch("/vm/ram?offset=0&length=16777216")).arrayBuffer(),
      );
      const out = await run(PYTHON!, [ANALYZER, "-f", `${dir}/snap`, "-x"], dir);
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stdout, /pc\.ram/);
      const extracted = await Deno.readFile(`${dir}/pc.ram`);
      assert.equal(extracted.length, ram.length);
      assert.ok(
        extracted.every((v, i) => v === ram[i]),
        "the analyzer's pc.ram equals the guest's RAM",
      );
      const desc = JSON.parse(await Deno.readTextFile(`${dir}/desc.json`));
      assert.equal(desc.ferry.integrity.algorithm, "ferry-d32", "the integrity record is there");
      const state = JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
      assert.ok(Object.keys(state).some((k) => k.startsWith("vcpu")), Object.keys(state).join());
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "analyze-migration.py parses an x86 guest's file: snapshot: pc.ram equals the guest's " +
    "RAM, the x86 section reads as its fields (needs deno task guest:image)",
  ignore: !have(ANALYZER) || PYTHON === undefined || !guestImagePresent(),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "ferry-analyze-x86-" });
    try {
      await using src = await FerryProcess.start(["--guest", "x86", "--ram", "80M"], {}, {
        startTimeoutMs: 120_000,
      });
      {
        await using console = await followConsole(src);
        await withTimeout(
          console.log.waitFor((text) => parseTicks(text).length >= 2),
          600_000,
          "the guest's ticks",
        );
      }
      const started = await src.api("POST", "/migrations", { uri: `file:${dir}/snap` });
      assert.equal(started.status, 202, JSON.stringify(started.body));
      assert.equal((await sourceFinal(src)).status, "completed");
      // Stopped (postmigrate), and GET /vm/ram reads the emulator's own memory.
      const ram = new Uint8Array(80 << 20);
      for (let at = 0; at < ram.length; at += 16 << 20) {
        const res = await src.fetch(`/vm/ram?offset=${at}&length=${16 << 20}`);
        ram.set(new Uint8Array(await res.arrayBuffer()), at);
      }
      const out = await run(PYTHON!, [ANALYZER, "-f", `${dir}/snap`, "-x"], dir);
      assert.equal(out.code, 0, out.stderr);
      const extracted = await Deno.readFile(`${dir}/pc.ram`);
      assert.equal(extracted.length, ram.length);
      assert.ok(extracted.some((v) => v !== 0), "a booted guest's RAM is not all zero");
      assert.ok(
        extracted.every((v, i) => v === ram[i]),
        "the analyzer's pc.ram equals the guest's RAM",
      );
      const desc = JSON.parse(await Deno.readTextFile(`${dir}/desc.json`));
      const x86 = desc.devices.find((d: { name: string }) => d.name === "x86");
      assert.ok(x86, JSON.stringify(desc.devices));
      assert.deepEqual(
        x86.fields.map((f: { name: string }) => f.name),
        [
          "version_len",
          "version",
          "devices_len",
          "devices",
          "console_offset",
          "console_len",
          "console",
        ],
      );
      const state = JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
      assert.ok(Object.keys(state).some((k) => k.startsWith("x86")), Object.keys(state).join());
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Runs a program to completion in `cwd`, its output as text. */
async function run(
  cmd: string,
  args: string[],
  cwd: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code, stdout: dec.decode(stdout), stderr: dec.decode(stderr) };
}
