import assert from "node:assert/strict";
import type { FuzzResult } from "../../bench/fuzz.ts";

const FUZZ = new URL("../../bench/fuzz.ts", import.meta.url).pathname;

/**
 * Runs the fuzzer as `deno task fuzz` does — in its own process with
 * --expose-gc, so retained memory is measured after full GCs, and in a worker
 * watched for synchronous hangs — and reads its JSON result.
 */
async function fuzz(iterations: number, seed: number): Promise<FuzzResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-env",
      "--allow-sys",
      "--v8-flags=--expose-gc",
      FUZZ,
      "--iterations",
      String(iterations),
      "--seed",
      String(seed),
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const last = text.trim().split("\n").at(-1) ?? "";
  assert.ok(
    last.startsWith("{"),
    `fuzz printed its result: ${text} ${new TextDecoder().decode(out.stderr)}`,
  );
  return JSON.parse(last);
}

Deno.test("fuzz: 10,000 mutated streams end in a StreamError or a whole load, never hang, leak, or write RAM the stream does not address", async () => {
  const r = await fuzz(10_000, 6);
  const findings = r.findings.map((f) =>
    `${f.kind} ×${f.count}: ${f.message} (iteration ${f.iteration}, ${f.mutation}, stream ${f.stream})`
  );
  assert.deepEqual(findings, [], "the fuzzer found nothing");
  assert.equal(r.iterations, 10_000);
  assert.equal(r.accepted + r.rejected, 10_000);
  assert.ok(r.rejected > 1000, "most mutations are rejected");
  assert.ok(r.accepted > 0, "some mutations keep the stream valid");
  assert.ok(Object.keys(r.mutations).length >= 9, "every mutation kind ran");
  assert.equal(r.memoryChecked, true, "retained memory was measured after full GCs");
  assert.ok(r.peakGrowth <= r.memoryBound && r.peakSpike <= r.spikeBound);
});
