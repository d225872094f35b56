/**
 * The encrypted, authenticated migration channel end to end (issue 18): real
 * ferries over TLS with the migration secret, certificates made by openssl in a
 * temporary directory. Sources that fail the destination's checks (no secret,
 * another secret, another CA, plaintext), and a man in the middle, are refused
 * before the destination's guest is touched, and the destination keeps
 * listening; the fault proxy's cuts and flips under TLS never end `completed`
 * with different RAM; damage that TLS cannot see (before encryption) is still
 * caught by the `verify` digests; a plaintext destination on 0.0.0.0 needs
 * --insecure-migration.
 */
import assert from "node:assert/strict";
import { Engine } from "../../engine/engine.ts";
import { makeTestPki, SERVER_NAME } from "../../testing/certs.ts";
import { FaultProxy } from "../../testing/fault_proxy.ts";
import { type FerryClient, FerryProcess } from "../../testing/ferry_process.ts";
import { ramDigest, TestGuest } from "../../testing/test_guest.ts";
import { TlsInterceptor } from "../../testing/tls_interceptor.ts";
import { createTransports } from "../../transports/mod.ts";
import type { Channel, ChannelSecurity, Transports } from "../../transports/transport.ts";
import {
  assertSourceIntact,
  migrateAndCompare,
  rearm,
  setParams,
  sourceFinal,
  startMigration,
  UNLIMITED,
} from "../helpers/ferries.ts";
import { rng } from "../helpers/rng.ts";

const RAM = "32M";

const pki = await makeTestPki();
globalThis.addEventListener("unload", () => Deno.removeSync(pki.dir, { recursive: true }));

/** The flags of a TLS destination holding the secret. */
const DST_FLAGS = [
  "--tls-cert",
  pki.server.cert,
  "--tls-key",
  pki.server.key,
  "--migration-secret",
  pki.secret,
];
/** The parameters of a source that trusts the CA and holds the secret. */
const SRC_PARAMS = { tls_ca: pki.ca, tls_hostname: SERVER_NAME, migration_secret: pki.secret };

function source(extra: string[] = []): Promise<FerryProcess> {
  return FerryProcess.start([
    "--ram",
    RAM,
    "--fill",
    "random",
    "--workload",
    "random:rate=4M",
    ...extra,
  ]);
}

/** Sets parameters of any kind (asserting 200). */
async function patch(f: FerryClient, params: Record<string, string | number>): Promise<void> {
  const res = await f.api("PATCH", "/migrations/parameters", params);
  assert.equal(res.status, 200, JSON.stringify(res.body));
}

/**
 * Migrates to `uri`, expects the source to fail with `error`, and the destination
 * to drop the connection and go on listening with an untouched guest, saying why
 * in `last_refused` (matching `refused`).
 */
async function assertRefused(
  src: FerryClient,
  dst: FerryClient,
  uri: string,
  error: RegExp,
  refused: RegExp,
): Promise<void> {
  const before = (await dst.api("GET", "/migrations/incoming")).body.refused_peers ?? 0;
  await startMigration(src, uri);
  const out = await sourceFinal(src);
  assert.equal(out.status, "failed", JSON.stringify(out));
  assert.match(out.error_desc, error);
  await assertSourceIntact(src);
  const inc = await dst.waitFor("/migrations/incoming", (b) => (b.refused_peers ?? 0) > before);
  assert.equal(inc.status, "listening", JSON.stringify(inc));
  assert.equal(inc.bytes_received, 0, "no byte of the stream was loaded");
  assert.match(inc.last_refused, refused);
  assert.equal((await dst.api("GET", "/vm")).body.run_state, "inmigrate");
}

Deno.test("tls: a TLS migration with the migration secret completes byte for byte; sources without the secret, with another one, trusting another CA, or in plaintext are refused and the destination keeps listening", async () => {
  await using dst = await FerryProcess.destination(RAM, "tcp:127.0.0.1:0", DST_FLAGS);
  await using src = await source();
  await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 300 });
  // TLS, but no secret: the destination refuses its stream and tells it why.
  await patch(src, { tls_ca: pki.ca, tls_hostname: SERVER_NAME });
  await assertRefused(
    src,
    dst,
    dst.incoming,
    /refused this connection: it started a stream without proving it holds the migration secret|reset|broken pipe/,
    /started a stream without proving it holds the migration secret/,
  );
  // Another secret.
  await patch(src, { migration_secret: pki.otherSecret });
  await assertRefused(
    src,
    dst,
    dst.incoming,
    /does not hold this ferry's migration secret/,
    /closed the connection|does not hold|reset/,
  );
  // The right secret, but trusting another CA.
  await patch(src, { migration_secret: pki.secret, tls_ca: pki.rogueCa });
  await assertRefused(
    src,
    dst,
    dst.incoming,
    /over TLS: the destination's certificate is not signed by the CA in .*rogue-ca\.pem \(tls_ca\)/,
    /refused the TLS handshake: it does not trust the CA/,
  );
  // The wrong name.
  await patch(src, { tls_ca: pki.ca, tls_hostname: "ferry-elsewhere.test" });
  await assertRefused(
    src,
    dst,
    dst.incoming,
    /not for the name "ferry-elsewhere\.test" \(tls_hostname\)/,
    /refused the TLS handshake/,
  );
  // Plaintext.
  await patch(src, { tls_ca: "", tls_hostname: "", migration_secret: "" });
  await assertRefused(
    src,
    dst,
    dst.incoming,
    /reset|closed|broken pipe|refused/,
    /does not speak TLS/,
  );
  // The real source.
  await patch(src, SRC_PARAMS);
  await migrateAndCompare(src, dst);
});

Deno.test("tls: a man in the middle re-terminating TLS with its own certificate is refused; it reads nothing and the destination is not touched", async () => {
  await using dst = await FerryProcess.destination(RAM, "tcp:127.0.0.1:0", DST_FLAGS);
  await using src = await source();
  await patch(src, { ...SRC_PARAMS, max_bandwidth: UNLIMITED, downtime_limit: 300 });
  const port = Number(/:(\d+)$/.exec(dst.incoming)![1]);
  await using mitm = await TlsInterceptor.start(
    { hostname: "127.0.0.1", port, caFile: pki.ca, serverName: SERVER_NAME },
    pki.rogue,
  );
  await startMigration(src, mitm.address);
  const out = await sourceFinal(src);
  assert.equal(out.status, "failed");
  assert.match(out.error_desc, /not signed by the CA in/);
  await mitm.close();
  assert.equal(mitm.intercepted, 0, "the interceptor never saw a byte of the stream");
  const inc = (await dst.api("GET", "/migrations/incoming")).body;
  assert.equal(inc.status, "listening");
  assert.equal(inc.bytes_received, 0);
  await assertSourceIntact(src);
  await migrateAndCompare(src, dst);
});

Deno.test("tls: cuts and seeded byte flips of the TLS stream never end completed with different RAM; then a migration succeeds", async () => {
  await using dst = await FerryProcess.destination(RAM, "tcp:127.0.0.1:0", DST_FLAGS);
  await using src = await source();
  await patch(src, {
    ...SRC_PARAMS,
    max_bandwidth: UNLIMITED,
    downtime_limit: 300,
    resume_grace: 0,
  });
  await patch(dst, { resume_grace: 0 }); // cuts fail here; resume_test.ts resumes them
  const random = rng(0x7157);
  const plans = [
    { cutAt: 100 }, // inside the TLS handshake
    { cutAt: 3000 }, // after the handshake and the secret's exchange
    { cutAt: 2_000_000 }, // mid-RAM
    ...Array.from({ length: 6 }, (_, i) => ({
      flipAt: i === 0 ? 50 : 2000 + Math.floor(random() * 30_000_000),
      flipMask: 1 << Math.floor(random() * 8),
    })),
  ];
  for (const plan of plans) {
    const what = JSON.stringify(plan);
    const before = (await dst.api("GET", "/migrations/incoming")).body.refused_peers ?? 0;
    // TLS records are opaque to the proxy: it forwards the answers as they come.
    await using proxy = FaultProxy.start(dst.incoming!, { ...plan, opaque: true });
    await startMigration(src, proxy.address);
    const out = await sourceFinal(src);
    // The destination either failed the stream, or dropped the connection before one started.
    const inc = await dst.waitFor(
      "/migrations/incoming",
      (b) => (b.status !== "active" && b.status !== "listening") || (b.refused_peers ?? 0) > before,
    );
    if (out.status === "completed") {
      assert.equal(inc.status, "completed", `${what}: ${JSON.stringify(inc)}`);
      const a = (await src.api("GET", "/vm/ram/digest")).body;
      const b = (await dst.api("GET", "/vm/ram/digest")).body;
      assert.equal(b.sha256, a.sha256, `${what}: completed, so RAM must be equal`);
      assert.equal((await src.api("POST", "/vm/start")).status, 200);
      await rearm(dst);
      continue;
    }
    assert.equal(out.status, "failed", `${what}: ${JSON.stringify(out)}`);
    assert.ok(out.error_desc, `${what}: the source says why`);
    await assertSourceIntact(src);
    if (inc.status === "listening") continue; // refused during the handshake: still armed
    assert.equal(inc.status, "failed", `${what}: ${JSON.stringify(inc)}`);
    assert.match(inc.error_desc, /no close_notify|TLS record failed authentication/, what);
    assert.equal((await dst.api("GET", "/vm")).body.run_state, "inmigrate");
    assert.equal((await dst.api("POST", "/vm/start")).status, 409);
    await rearm(dst);
    await proxy.close();
  }
  await migrateAndCompare(src, dst);
});

/**
 * Real transports whose connect() returns a channel that flips one plaintext byte
 * at stream offset `at` before TLS encrypts it: damage TLS cannot see (a bad
 * memory buffer on the source), which only the `verify` digests can catch.
 */
function flippingTransports(inner: Transports, at: number): Transports {
  return {
    validate: (uri, direction) => inner.validate(uri, direction),
    listen: (uri, security) => inner.listen(uri, security),
    async connect(uri: string, signal?: AbortSignal, security?: ChannelSecurity) {
      const ch = await inner.connect(uri, signal, security);
      let offset = 0;
      const flipping: Channel = {
        get peer() {
          return ch.peer;
        },
        get closed() {
          return ch.closed;
        },
        write(chunk: Uint8Array) {
          if (at >= offset && at < offset + chunk.length) {
            chunk = chunk.slice();
            chunk[at - offset] ^= 0x20;
          }
          offset += chunk.length;
          return ch.write(chunk);
        },
        read: (buf) => ch.read(buf),
        finish: () => ch.finish(),
        close: () => ch.close(),
        [Symbol.dispose]: () => ch.close(),
      };
      return flipping;
    },
  };
}

Deno.test("tls: the verify digests still catch damage made before encryption, naming the page, and the guest does not start", async () => {
  const real = createTransports();
  const dst = new TestGuest([["pc.ram", 4 << 20]]);
  const src = new TestGuest([["pc.ram", 4 << 20]]);
  src.fillRandom(5);
  src.start();
  const dstEngine = new Engine({ guest: dst, transports: real });
  // Page 100's content: the stream's first pages follow the header and setup.
  const srcEngine = new Engine({ guest: src, transports: flippingTransports(real, 200_000) });
  try {
    dstEngine.setParameters({
      tls_cert: pki.server.cert,
      tls_key: pki.server.key,
      migration_secret: pki.secret,
    });
    srcEngine.setParameters({ ...SRC_PARAMS, max_bandwidth: 1 << 30 });
    const armed = await dstEngine.listenIncoming("tcp:127.0.0.1:0");
    srcEngine.migrate(armed.address!);
    await srcEngine.migration!.done;
    await dstEngine.incoming!.done;
    const out = srcEngine.current();
    const inc = dstEngine.incomingInfo();
    assert.equal(out.status, "failed", JSON.stringify(out));
    assert.equal(inc.status, "failed", JSON.stringify(inc));
    assert.match(inc.error_desc!, /integrity|digest/i);
    assert.match(inc.error_desc!, /page \d+/);
    assert.equal(dst.runState, "inmigrate");
    assert.equal(src.runState, "running", "the source's guest runs on");
    // Without the damage, the same TLS path carries the guest exactly.
    const clean = new Engine({ guest: src, transports: real });
    try {
      clean.setParameters({ ...SRC_PARAMS, max_bandwidth: 1 << 30 });
      const again = await dstEngine.listenIncoming("tcp:127.0.0.1:0");
      clean.migrate(again.address!);
      await clean.migration!.done;
      await dstEngine.incoming!.done;
      assert.equal(clean.current().status, "completed", clean.current().error_desc);
      assert.equal(dstEngine.incomingInfo().status, "completed");
      assert.equal(await ramDigest(dst), await ramDigest(src));
    } finally {
      await clean.close();
    }
  } finally {
    await srcEngine.close();
    await dstEngine.close();
  }
});

Deno.test("tls: a plaintext destination on 0.0.0.0 refuses to arm unless --insecure-migration; with TLS it listens", async () => {
  // --incoming on 0.0.0.0 without TLS: ferry exits saying why.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "main.ts",
      "--listen",
      "127.0.0.1:0",
      "--ram",
      "8M",
      "--incoming",
      "tcp:0.0.0.0:0",
    ],
    env: { FERRY_TOKEN: "a-test-token-of-16-chars" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 1);
  const err = new TextDecoder().decode(out.stderr);
  assert.match(
    err,
    /cannot listen for --incoming tcp:0\.0\.0\.0:0: Refusing to listen on tcp:0\.0\.0\.0:0 without TLS/,
  );
  assert.match(err, /--insecure-migration/);
  // The API says the same, and the guest is not touched.
  {
    await using f = await FerryProcess.start(["--ram", "8M", "--paused"]);
    const before = (await f.api("GET", "/vm")).body.run_state;
    const res = await f.api("POST", "/migrations/incoming", { uri: "tcp:0.0.0.0:0" });
    assert.equal(res.status, 403, JSON.stringify(res.body));
    assert.equal(res.body.error.code, "insecure-migration");
    assert.equal((await f.api("GET", "/vm")).body.run_state, before);
    assert.equal((await f.api("GET", "/migrations/incoming")).body.status, "none");
  }
  // Allowed explicitly, or with TLS.
  {
    await using f = await FerryProcess.destination("8M", "tcp:0.0.0.0:0", ["--insecure-migration"]);
    assert.match(f.incoming, /^tcp:0\.0\.0\.0:\d+$/);
  }
  {
    await using f = await FerryProcess.destination("8M", "tcp:0.0.0.0:0", DST_FLAGS);
    assert.match(f.incoming, /^tcp:0\.0\.0\.0:\d+$/);
  }
});
