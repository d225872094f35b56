import assert from "node:assert/strict";
import { CliError, HELP, parseFlags } from "../cli.ts";

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
  assert.equal(c.token, undefined, "no token given: ferry generates one");
  assert.equal(c.tokenFile, undefined);
  assert.deepEqual(c.allowedHosts, []);
  assert.equal(c.guest, "synthetic");
  assert.deepEqual(c.x86, {});
  assert.deepEqual(c.security, {});
  assert.equal(c.insecureMigration, false);
});

Deno.test("parseFlags() reads the channel security flags into parameters, making relative paths absolute", () => {
  const c = parseFlags([
    "--tls-cert",
    "pki/dst.pem",
    "--tls-key",
    "/etc/ferry/dst.key",
    "--tls-ca",
    "ca.pem",
    "--tls-hostname",
    "ferry-dst.example",
    "--migration-secret",
    "migration.secret",
    "--snapshot-key",
    "/k",
    "--insecure-migration",
  ], { cwd: "/srv/ferry/" });
  assert.deepEqual(c.security, {
    tls_cert: "/srv/ferry/pki/dst.pem",
    tls_key: "/etc/ferry/dst.key",
    tls_ca: "/srv/ferry/ca.pem",
    tls_hostname: "ferry-dst.example",
    migration_secret: "/srv/ferry/migration.secret",
    snapshot_key: "/k",
  });
  assert.equal(c.insecureMigration, true);
});

Deno.test("parseFlags() reads the x86 guest's flags", () => {
  const c = parseFlags([
    "--guest",
    "x86",
    "--ram",
    "128M",
    "--kernel",
    "/k",
    "--initrd",
    "/i",
    "--bios",
    "/b",
    "--append",
    "console=ttyS0",
  ]);
  assert.equal(c.guest, "x86");
  assert.equal(c.ramSize, 128 << 20);
  assert.deepEqual(c.x86, { kernel: "/k", initrd: "/i", bios: "/b", append: "console=ttyS0" });
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
    "--token-file",
    "/run/user/1000/f.token",
    "--allowed-host",
    "ferry.lan",
    "--allowed-host",
    "fe80::1",
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
  assert.equal(c.tokenFile, "/run/user/1000/f.token");
  assert.deepEqual(c.allowedHosts, ["ferry.lan", "fe80::1"]);
});

Deno.test("parseFlags() takes --fill image:PATH as a RAM image to load", () => {
  const c = parseFlags(["--ram", "64M", "--fill", "image:/var/tmp/real-64m.img"]);
  assert.equal(c.image, "/var/tmp/real-64m.img");
  assert.equal(c.fill, "zero");
  assert.equal(parseFlags([]).image, undefined);
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
    [["--fill", "ones"], /--fill "ones": expected one of zero, random, pattern or image:PATH/],
    [["--fill", "image:"], /--fill image: empty path/],
    [["--guest", "x86", "--fill", "image:/x.img"], /--fill prepares the synthetic guest's RAM/],
    [["--token", "a"], /at least 16 characters \(this one has 1\)/],
    [["--token", "short-token"], /at least 16 characters/],
    [["--token", "a-long-enough-token", "--token-file", "/tmp/t"], /--token-file/],
    [["--token-file", "relative/t.token"], /absolute/],
    [["--token-file", "/tmp/dir/"], /absolute file path/],
    [["--allowed-host", "evil.example/x"], /--allowed-host "evil\.example\/x"/],
    [["--allowed-host", ""], /--allowed-host/],
    [["--guest", "arm"], /--guest "arm": expected synthetic or x86/],
    [["--kernel", "/k"], /--kernel is for the x86 guest: add --guest x86/],
    [["--guest", "x86", "--ram", "32M"], /whole MiB from 64M to 2047M/],
    [["--guest", "x86", "--ram", "3G"], /whole MiB from 64M to 2047M/],
    [["--guest", "x86", "--ram", "100M", "--workload", "ab"], /the x86 guest runs Linux/],
    [["--guest", "x86", "--fill", "random"], /--fill/],
    [["--guest", "x86", "--kernel", ""], /--kernel: empty path/],
    [["--guest", "x86", "--disk", "/tmp/d.img"], /--disk is for the synthetic guest/],
    [["--tls-cert", "/c.pem"], /--tls-cert and --tls-key go together/],
    [["--tls-key", "/c.key"], /--tls-cert and --tls-key go together/],
    [["--tls-hostname", "a b"], /Invalid --tls-hostname "a b": expected a host name/],
    [["--migration-secret", ""], /Invalid --migration-secret: empty/],
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

Deno.test("parseFlags() takes the token from --token, else FERRY_TOKEN (empty is unset)", () => {
  assert.equal(
    parseFlags([], { FERRY_TOKEN: "env-token-0123456789" }).token,
    "env-token-0123456789",
  );
  assert.equal(
    parseFlags(["--token", "flag-token-0123456789"], { FERRY_TOKEN: "env-token-0123456789" }).token,
    "flag-token-0123456789",
  );
  assert.equal(parseFlags([], { FERRY_TOKEN: "" }).token, undefined);
});

Deno.test("parseFlags() refuses a short FERRY_TOKEN without repeating it", () => {
  assert.throws(() => parseFlags([], { FERRY_TOKEN: "hunter2" }), (e: unknown) => {
    assert.ok(e instanceof CliError);
    assert.match(e.message, /FERRY_TOKEN: a token needs at least 16 characters/);
    assert.ok(!e.message.includes("hunter2"));
    return true;
  });
});

Deno.test("parseFlags() allows a non-loopback address: every request needs the token anyway", () => {
  const generated = parseFlags(["--listen", "0.0.0.0:8080"]);
  assert.equal(generated.hostname, "0.0.0.0");
  assert.equal(generated.token, undefined);
  const given = parseFlags(["--listen", "0.0.0.0:8080"], { FERRY_TOKEN: "s3cret-s3cret-s3cret" });
  assert.equal(given.token, "s3cret-s3cret-s3cret");
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
      "--token-file",
      "--allowed-host",
      "--tls-cert",
      "--tls-key",
      "--tls-ca",
      "--tls-hostname",
      "--migration-secret",
      "--snapshot-key",
      "--insecure-migration",
      "FERRY_TOKEN",
      "--help",
    ]
  ) assert.ok(HELP.includes(flag), flag);
});

Deno.test("--state-dir: an absolute path as given, a relative one from the working directory, empty refused", () => {
  assert.equal(parseFlags(["--state-dir", "/var/lib/ferry"]).stateDir, "/var/lib/ferry");
  assert.equal(parseFlags(["--state-dir", "state"], { cwd: "/srv/f/" }).stateDir, "/srv/f/state");
  assert.equal(parseFlags([]).stateDir, undefined);
  assert.throws(() => parseFlags(["--state-dir", ""]), /Invalid --state-dir: empty path/);
});

Deno.test("parseFlags() reads --peer: ferry by default, qemu for a QEMU guest held, never with what runs a guest", () => {
  assert.equal(parseFlags([]).peer, "ferry");
  const c = parseFlags(["--peer", "qemu", "--ram", "32M", "--fill", "random"]);
  assert.equal(c.peer, "qemu");
  assert.equal(c.fill, "random");
  for (
    const [args, why] of [
      [["--peer", "kvm"], /Invalid --peer "kvm": expected ferry or qemu/],
      [["--peer", "qemu", "--guest", "x86", "--ram", "64M"], /drop --guest x86/],
      [["--peer", "qemu", "--workload", "random:rate=1M"], /drop --workload/],
      [["--peer", "qemu", "--disk", "/tmp/d.img"], /--disk/],
    ] as const
  ) {
    assert.throws(() => parseFlags([...args]), (e) => e instanceof CliError && why.test(e.message));
  }
  assert.match(HELP, /--peer ferry\|qemu/);
});

Deno.test("parseFlags(): --param NAME=VALUE sets parameters to start with, validated by the API's schema", () => {
  assert.deepEqual(parseFlags([]).parameters, {});
  const c = parseFlags([
    "--param",
    "compress_method=zstd",
    "--param",
    "multifd_channels=2",
    "--param",
    "resume_auto=true",
  ]);
  assert.deepEqual(c.parameters, {
    compress_method: "zstd",
    multifd_channels: 2,
    resume_auto: true,
  });
  for (
    const [arg, message] of [
      ["compress_method=gzip", /--param compress_method="gzip": .*"zstd"/],
      ["nonsense=1", /--param nonsense=1: .*nonsense/],
      ["multifd_channels=99", /--param multifd_channels=99: .*16/],
      ["foo", /--param "foo": expected NAME=VALUE/],
    ] as const
  ) {
    assert.throws(() => parseFlags(["--param", arg]), (e: Error) => {
      assert.ok(e instanceof CliError);
      assert.match(e.message, message);
      return true;
    });
  }
});
