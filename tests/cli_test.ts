import assert from "node:assert/strict";
import { CliError, HELP, isLoopback, parseFlags } from "../cli.ts";

Deno.test("parseFlags() applies the documented defaults", () => {
  const c = parseFlags([]);
  assert.equal(c.hostname, "127.0.0.1");
  assert.equal(c.port, 8080);
  assert.equal(c.ramSize, 256 << 20);
  assert.equal(c.workload.kind, "idle");
  assert.equal(c.fill, "zero");
  assert.equal(c.autostart, true);
  assert.equal(c.paused, false);
  assert.equal(c.allowExec, false);
  assert.equal(c.prefault, true);
  assert.equal(c.incoming, undefined);
});

Deno.test("parseFlags() reads every flag", () => {
  const c = parseFlags([
    "--listen",
    "[::1]:0",
    "--ram",
    "1G",
    "--workload",
    "random:rate=50M,hot=10%:90%",
    "--fill",
    "random",
    "--incoming",
    "tcp:127.0.0.1:4444",
    "--no-autostart",
    "--paused",
    "--allow-exec",
    "--no-prefault",
  ]);
  assert.equal(c.hostname, "::1");
  assert.equal(c.port, 0);
  assert.equal(c.ramSize, 1 << 30);
  assert.equal(c.workload.kind, "random");
  assert.equal(c.fill, "random");
  assert.equal(c.incoming, "tcp:127.0.0.1:4444");
  assert.equal(c.autostart, false);
  assert.equal(c.paused, true);
  assert.equal(c.allowExec, true);
  assert.equal(c.prefault, false);
});

Deno.test("parseFlags() skips the '--' that deno task passes through", () => {
  assert.equal(parseFlags(["--", "--ram", "64M"]).ramSize, 64 << 20);
});

for (
  const [args, pattern] of [
    [["--bogus"], /bogus/],
    [["--ram", "12Q"], /--ram/],
    [["--ram", "100"], /multiple of 4096/],
    [["--listen", "nohost"], /HOST:PORT/],
    [["--listen", "127.0.0.1:70000"], /65535/],
    [["--workload", "spin"], /--workload/],
    [["--fill", "ones"], /--fill "ones"/],
    [["--listen", "0.0.0.0:8080"], /token/],
  ] as [string[], RegExp][]
) {
  Deno.test(`parseFlags() rejects ${args.join(" ")} with a one-line message`, () => {
    assert.throws(() => parseFlags(args), (e: unknown) => {
      assert.ok(e instanceof CliError);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("\n"), "one line");
      return true;
    });
  });
}

Deno.test("parseFlags() allows a non-loopback address with a token from the environment", () => {
  const c = parseFlags(["--listen", "0.0.0.0:8080"], { FERRY_TOKEN: "s3cret" });
  assert.equal(c.token, "s3cret");
});

Deno.test("isLoopback() knows loopback names and addresses", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1"]) assert.ok(isLoopback(h), h);
  for (const h of ["0.0.0.0", "10.0.0.1", "::", "example.com"]) assert.ok(!isLoopback(h), h);
});

Deno.test("HELP documents every flag", () => {
  for (
    const flag of [
      "--listen",
      "--ram",
      "--workload",
      "--fill",
      "--incoming",
      "--no-autostart",
      "--paused",
      "--no-prefault",
      "--allow-exec",
      "--token",
      "--help",
    ]
  ) assert.ok(HELP.includes(flag), flag);
});
