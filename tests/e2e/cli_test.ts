import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";

const main = new URL("../../main.ts", import.meta.url).pathname;

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("main.ts --help prints every flag and exits 0", async () => {
  const r = await run(["--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--workload/);
});

Deno.test("main.ts exits non-zero with one line for a bad size", async () => {
  const r = await run(["--ram", "lots"]);
  assert.equal(r.code, 2);
  assert.equal(r.stderr.trim().split("\n").length, 1);
  assert.match(r.stderr, /--ram/);
});

Deno.test("main.ts prints the API URL and, with --incoming, the real address", async () => {
  await using f = await FerryProcess.start(["--ram", "8M", "--incoming", "tcp:127.0.0.1:0"]);
  assert.match(f.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  // main.ts prints the incoming address before the API URL: it is known once started.
  assert.match(f.incoming ?? "", /^tcp:127\.0\.0\.1:[1-9]\d*$/);
  const vm = await f.api("GET", "/vm");
  assert.equal(vm.body.run_state, "inmigrate");
});

Deno.test("main.ts with --token refuses requests without the bearer token", async () => {
  await using f = await FerryProcess.start(["--ram", "8M", "--token", "t0ken-t0ken-t0ken"]);
  assert.match(f.output(), /dashboard http:\/\/127\.0\.0\.1:\d+\/ \(it asks for the/);
  assert.doesNotMatch(f.output(), /t0ken-t0ken-t0ken|API token in/, "a given token is not printed");
  const denied = await fetch(`${f.url}/vm`);
  await denied.body?.cancel();
  assert.equal(denied.status, 401);
  const ok = await fetch(`${f.url}/vm`, { headers: { authorization: "Bearer t0ken-t0ken-t0ken" } });
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).run_state, "running");
});
