/**
 * `deno task demo --guest x86` (bench/demo.ts) end to end: two x86 ferries, a live
 * migration, equal digests, the tick chain carried on and the destination's shell
 * answering. Needs `deno task guest:image`; waits only on the demo itself, under a
 * hang guard.
 */
import assert from "node:assert/strict";
import { guestImagePresent } from "../../vm/x86/guest_image.ts";
import { parseTicks } from "../../vm/x86/ticks.ts";
import { withTimeout } from "../helpers/wait.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
/** Hang guard for the whole demo: two emulated guests, one of them booting. */
const DEMO_GUARD_MS = 900_000;

/** Runs `deno task demo ARGS…`; its exit code and output. */
async function demo(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", "demo", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    out: decoder.decode(output.stdout),
    err: decoder.decode(output.stderr),
  };
}

Deno.test("deno task demo refuses an unknown --guest with exit 2", async () => {
  const { code, err } = await demo(["--guest", "arm"]);
  assert.equal(code, 2);
  assert.match(err, /^ferry demo: unknown --guest "arm": expected synthetic or x86\n$/);
});

Deno.test({
  name: "deno task demo --guest x86: digests match, the tick chain carries on, the shell " +
    "answers 42, exit 0 (needs deno task guest:image)",
  ignore: !guestImagePresent(),
  async fn() {
    const { code, out, err } = await withTimeout(
      demo(["--guest", "x86"]),
      DEMO_GUARD_MS,
      "the x86 demo",
    );
    assert.equal(code, 0, out + err);
    assert.match(out, /^ {2}status +completed$/m);
    const src = /^ {2}source RAM +sha256 ([0-9a-f]{64}) \(postmigrate\)$/m.exec(out);
    const dst = /^ {2}destination RAM sha256 ([0-9a-f]{64}) \(paused\)$/m.exec(out);
    assert.ok(src && dst, out);
    assert.equal(dst[1], src[1]);
    /** The tick lines the demo prints under `title`. */
    const shown = (title: string) =>
      parseTicks(new RegExp(`${title}:\n((?: {4}tick .*\n)+)`).exec(out)?.[1] ?? "");
    const last = shown("the source's last ticks").at(-1);
    const next = shown("the destination's next ticks")[0];
    assert.ok(last && next, out);
    assert.equal(next.n, last.n + 1, "the destination's first tick follows on");
    assert.match(out, /tick chain: unbroken from tick 1 to tick \d+ across both ends/);
    assert.match(out, /the destination's shell answers: 42\n/);
  },
});
