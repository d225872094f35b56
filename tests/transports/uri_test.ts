import assert from "node:assert/strict";
import { formatUri, type MigrationUri, parseUri } from "../../transports/uri.ts";
import { assertTransportError } from "./_helpers.ts";

Deno.test("parseUri() reads tcp:HOST:PORT with an IPv4 address or a host name", () => {
  assert.deepEqual(parseUri("tcp:127.0.0.1:4444"), {
    scheme: "tcp",
    host: "127.0.0.1",
    port: 4444,
  });
  assert.deepEqual(parseUri("tcp:dst.example-1.org:0"), {
    scheme: "tcp",
    host: "dst.example-1.org",
    port: 0,
  });
  assert.deepEqual(parseUri("tcp:localhost:65535"), {
    scheme: "tcp",
    host: "localhost",
    port: 65535,
  });
});

Deno.test("parseUri() reads a bracketed IPv6 tcp: host without the brackets", () => {
  assert.deepEqual(parseUri("tcp:[::1]:4444"), { scheme: "tcp", host: "::1", port: 4444 });
  assert.deepEqual(parseUri("tcp:[fe80::1%eth0]:1"), {
    scheme: "tcp",
    host: "fe80::1%eth0",
    port: 1,
  });
});

Deno.test("parseUri() refuses malformed tcp: URIs with bad-uri", async () => {
  await assertTransportError(() => parseUri("tcp:127.0.0.1"), "bad-uri", "HOST:PORT");
  await assertTransportError(() => parseUri("tcp:127.0.0.1:"), "bad-uri", "not a number");
  await assertTransportError(() => parseUri("tcp:127.0.0.1:http"), "bad-uri", "not a number");
  await assertTransportError(() => parseUri("tcp:127.0.0.1:65536"), "bad-uri", "above 65535");
  await assertTransportError(() => parseUri("tcp:127.0.0.1:-1"), "bad-uri");
  await assertTransportError(() => parseUri("tcp::4444"), "bad-uri", "host is empty");
  await assertTransportError(() => parseUri("tcp:::1:4444"), "bad-uri", "brackets");
  await assertTransportError(() => parseUri("tcp:[::1]4444"), "bad-uri", "[IPv6]:PORT");
  await assertTransportError(() => parseUri("tcp:[::1:4444"), "bad-uri", "[IPv6]:PORT");
  await assertTransportError(() => parseUri("tcp:[]:4444"), "bad-uri", "host is empty");
  await assertTransportError(() => parseUri("tcp:a b:4444"), "bad-uri", "invalid characters");
});

Deno.test("parseUri() accepts tcp: port 0 to listen on, but not to connect to", async () => {
  assert.equal((parseUri("tcp:127.0.0.1:0", "listen") as { port: number }).port, 0);
  assert.equal((parseUri("tcp:127.0.0.1:0") as { port: number }).port, 0);
  await assertTransportError(
    () => parseUri("tcp:127.0.0.1:0", "connect"),
    "bad-uri",
    "port 0",
    "when listening",
  );
  await assertTransportError(() => parseUri("tcp:[::1]:00", "connect"), "bad-uri", "port 0");
  assert.equal((parseUri("tcp:127.0.0.1:1", "connect") as { port: number }).port, 1);
});

Deno.test("parseUri() reads unix:PATH with an absolute path", async () => {
  assert.deepEqual(parseUri("unix:/run/ferry.sock"), { scheme: "unix", path: "/run/ferry.sock" });
  await assertTransportError(() => parseUri("unix:"), "bad-uri", "path is empty");
});

Deno.test("parseUri() refuses a relative unix: path, as it does a relative file: path", async () => {
  await assertTransportError(() => parseUri("unix:ferry.sock"), "bad-uri", "must be absolute");
  await assertTransportError(() => parseUri("unix:./ferry.sock"), "bad-uri", "must be absolute");
  await assertTransportError(() => parseUri("unix:~/ferry.sock"), "bad-uri", "must be absolute");
});

Deno.test("parseUri() refuses a unix: path longer than the 107 bytes sun_path holds", async () => {
  const fits = `/tmp/${"x".repeat(107 - 5)}`;
  assert.equal(new TextEncoder().encode(fits).length, 107);
  assert.deepEqual(parseUri(`unix:${fits}`), { scheme: "unix", path: fits });
  await assertTransportError(() => parseUri(`unix:${fits}y`), "bad-uri", "108 bytes", "107");
  // Bytes, not characters: a slash and 54 two-byte characters are 109 bytes.
  await assertTransportError(() => parseUri(`unix:/${"é".repeat(54)}`), "bad-uri", "109 bytes");
});

Deno.test("parseUri() keeps an exec: command verbatim and refuses an empty one", async () => {
  assert.deepEqual(parseUri("exec:gzip -c > /tmp/x.gz"), {
    scheme: "exec",
    command: "gzip -c > /tmp/x.gz",
  });
  await assertTransportError(() => parseUri("exec:   "), "bad-uri", "command is empty");
});

Deno.test("parseUri() reads fd:N and refuses a non-number", async () => {
  assert.deepEqual(parseUri("fd:3"), { scheme: "fd", fd: 3 });
  await assertTransportError(() => parseUri("fd:"), "bad-uri", "file descriptor");
  await assertTransportError(() => parseUri("fd:three"), "bad-uri", "file descriptor");
  await assertTransportError(() => parseUri("fd:-1"), "bad-uri", "file descriptor");
});

Deno.test("parseUri() reads file:PATH with an optional decimal or hex offset", () => {
  assert.deepEqual(parseUri("file:/tmp/vm.img"), {
    scheme: "file",
    path: "/tmp/vm.img",
    offset: 0,
  });
  assert.deepEqual(parseUri("file:/tmp/vm.img,offset=4096"), {
    scheme: "file",
    path: "/tmp/vm.img",
    offset: 4096,
  });
  assert.deepEqual(parseUri("file:/tmp/vm.img,offset=0x1000"), {
    scheme: "file",
    path: "/tmp/vm.img",
    offset: 4096,
  });
});

Deno.test("parseUri() refuses a relative file: path and a bad offset", async () => {
  await assertTransportError(() => parseUri("file:vm.img"), "bad-uri", "must be absolute");
  await assertTransportError(() => parseUri("file:./vm.img"), "bad-uri", "must be absolute");
  await assertTransportError(() => parseUri("file:"), "bad-uri", "path is empty");
  await assertTransportError(() => parseUri("file:/tmp/x,offset="), "bad-uri", "offset");
  await assertTransportError(() => parseUri("file:/tmp/x,offset=-4"), "bad-uri", "offset");
  await assertTransportError(() => parseUri("file:/tmp/x,offset=1e3"), "bad-uri", "offset");
  await assertTransportError(
    () => parseUri("file:/tmp/x,offset=99999999999999999999"),
    "bad-uri",
    "offset",
  );
});

Deno.test("parseUri() reports unknown-protocol for a missing or unknown scheme", async () => {
  await assertTransportError(
    () => parseUri("rdma:10.0.0.1:4444"),
    "unknown-protocol",
    '"rdma:"',
    "tcp:",
  );
  await assertTransportError(() => parseUri("/tmp/x"), "unknown-protocol");
  await assertTransportError(() => parseUri(""), "unknown-protocol");
  await assertTransportError(() => parseUri("TCP:127.0.0.1:1"), "unknown-protocol");
});

Deno.test("formatUri() writes canonical text that parseUri() reads back", () => {
  const cases: [string, string][] = [
    ["tcp:127.0.0.1:4444", "tcp:127.0.0.1:4444"],
    ["tcp:[::1]:4444", "tcp:[::1]:4444"],
    ["tcp:localhost:007", "tcp:localhost:7"],
    ["unix:/run/f.sock", "unix:/run/f.sock"],
    ["exec:cat > /dev/null", "exec:cat > /dev/null"],
    ["fd:07", "fd:7"],
    ["file:/tmp/x,offset=0x10", "file:/tmp/x,offset=16"],
    ["file:/tmp/x,offset=0", "file:/tmp/x"],
  ];
  for (const [input, canonical] of cases) {
    const parsed: MigrationUri = parseUri(input);
    assert.equal(formatUri(parsed), canonical);
    assert.deepEqual(parseUri(canonical), parsed);
  }
});
