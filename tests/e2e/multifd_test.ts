/**
 * multifd between real ferries on real sockets (docs/ARCHITECTURE.md, "Multifd"):
 * with `multifd_channels` 2 and 4 on both ends, a dirtying guest's pages fan out
 * over that many more connections and the destination's RAM equals the source's
 * (the `verify` integrity check, on by default, covers every channel). A page
 * channel cut mid-migration, or a cancel, fails cleanly: the source guest runs
 * on, the destination never runs a partial guest and can be armed again.
 */
import assert from "node:assert/strict";
import { makeTestPki, SERVER_NAME } from "../../testing/certs.ts";
import { FerryProcess } from "../../testing/ferry_process.ts";
import type { FerryClient } from "../../testing/ferry_process.ts";
import {
  assertDestinationFailed,
  assertSourceIntact,
  cleanupUri,
  destinationFinal,
  type Kind,
  listenUri,
  migrateAndCompare,
  setParams,
  sourceFinal,
  startDestination,
  startMigration,
  UNLIMITED,
} from "../helpers/ferries.ts";

const RAM = "64M";

/** A source running `workload` and a destination armed on `kind` with `channels` channels. */
async function pair(channels: number, kind: Kind = "tcp", workload = "random:rate=4M") {
  // The a-b guest checks its own consistency (assertSourceIntact): it starts from zeroes.
  const fill = workload.startsWith("ab") ? [] : ["--fill", "random"];
  const src = await FerryProcess.start(["--ram", RAM, ...fill, "--workload", workload]);
  const dst = await startDestination(RAM, kind);
  await setParams(src, { multifd_channels: channels });
  await dst.api("DELETE", "/migrations/incoming");
  await cleanupUri(dst.incoming);
  await arm(dst, channels, kind);
  return { src, dst };
}

/** Sets multifd_channels on `dst` (read when armed) and arms it on a fresh URI of `kind`. */
async function arm(dst: FerryClient, channels: number, kind: Kind): Promise<string> {
  await setParams(dst, { multifd_channels: channels });
  const res = await dst.api("POST", "/migrations/incoming", { uri: await listenUri(kind) });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  dst.incoming = res.body.address;
  return res.body.address;
}

for (const [channels, kind] of [[2, "tcp"], [4, "tcp"], [2, "unix"]] as const) {
  Deno.test(`e2e multifd: ${channels} channels over ${kind}: a dirtying guest arrives with equal RAM`, async () => {
    const { src, dst } = await pair(channels, kind);
    await using _s = src;
    await using _d = dst;
    try {
      const info = await migrateAndCompare(src, dst);
      assert.equal(info.multifd.channels, channels);
      assert.ok(info.multifd.packets > 0, JSON.stringify(info.multifd));
      // A sync point after the first dirty-log sync and one at the end, at least.
      assert.ok(info.multifd.sync_points >= 2, JSON.stringify(info.multifd));
      const incoming = (await dst.api("GET", "/migrations/incoming")).body;
      assert.equal(incoming.pages.multifd_packets, info.multifd.packets);
      assert.ok(incoming.pages.normal >= (64 << 20) / 4096 / 2, JSON.stringify(incoming.pages));
    } finally {
      await cleanupUri(dst.incoming);
    }
  });
}

Deno.test("e2e multifd: zstd-compressed packets arrive with equal RAM", async () => {
  const { src, dst } = await pair(2, "tcp", "ab:rate=4M,range=8M");
  await using _s = src;
  await using _d = dst;
  await dst.api("DELETE", "/migrations/incoming");
  await dst.api("PATCH", "/migrations/parameters", { compress_method: "zstd" });
  await arm(dst, 2, "tcp");
  assert.equal(
    (await src.api("PATCH", "/migrations/parameters", { compress_method: "zstd" })).status,
    200,
  );
  const info = await migrateAndCompare(src, dst);
  // The a-b range's pages repeat one byte: they shrink.
  assert.ok(info.multifd.compressed_packets > 0, JSON.stringify(info.multifd));
  assert.ok(info.multifd.bytes < info.ram.normal * 4096 / 2, JSON.stringify(info));
});

Deno.test("e2e multifd: a destination set to another channel count fails the migration, saying so", async () => {
  const { src, dst } = await pair(2);
  await using _s = src;
  await using _d = dst;
  await dst.api("DELETE", "/migrations/incoming");
  await arm(dst, 1, "tcp");
  await setParams(src, { max_bandwidth: UNLIMITED });
  await startMigration(src, dst.incoming!);
  const out = await sourceFinal(src);
  assert.equal(out.status, "failed");
  assert.match(out.error_desc, /multifd_channels is 1: set the same on both ends/);
  await assertDestinationFailed(dst);
  await assertSourceIntact(src);
});

Deno.test("e2e multifd: other transports and bad values are refused with a clear error", async () => {
  await using src = await FerryProcess.start(["--ram", "16M"]);
  const bad = await src.api("PATCH", "/migrations/parameters", { multifd_channels: 0 });
  assert.equal(bad.status, 400);
  assert.match(JSON.stringify(bad.body), /multifd_channels/);
  const big = await src.api("PATCH", "/migrations/parameters", { multifd_channels: 17 });
  assert.equal(big.status, 400);
  assert.match(JSON.stringify(big.body), /multifd_channels/);
  await setParams(src, { multifd_channels: 2 });
  const dir = await Deno.makeTempDir();
  try {
    const res = await src.api("POST", "/migrations", { uri: `file:${dir}/snap` });
    assert.equal(res.status, 400, JSON.stringify(res.body));
    assert.match(res.body.error.message, /multifd_channels 2 needs a tcp: or unix: URI/);
    assert.equal((await src.api("GET", "/migrations/current")).body.status, "none");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A proxy in front of `target` that forwards every connection, and closes the
 * `victim`-th one (0 is the main stream) both ways once `cutAfter` of its source
 * bytes went through; with `flipAt`, it instead flips bit 0 of that byte of the
 * victim's stream (damage TCP's checksum did not catch).
 */
function channelCutter(target: string, victim: number, cutAfter: number, flipAt = -1) {
  const port = Number(/:(\d+)$/.exec(target)![1]);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  let count = 0;
  let wasCut = false;
  const pump = async (from: Deno.Conn, to: Deno.Conn, limit: number, flip = -1) => {
    const buf = new Uint8Array(64 << 10);
    let sent = 0;
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        if (flip >= sent && flip < sent + n) buf[flip - sent] ^= 1;
        const take = Math.min(n, limit - sent);
        for (let at = 0; at < take;) at += await to.write(buf.subarray(at, take));
        sent += take;
        if (sent >= limit) {
          wasCut = true;
          break;
        }
      }
    } catch { /* closed */ }
    for (const c of [from, to]) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  };
  const loop = (async () => {
    for await (const conn of listener) {
      const index = count++;
      const up = await Deno.connect({ hostname: "127.0.0.1", port });
      conns.add(conn).add(up);
      pump(conn, up, index === victim ? cutAfter : Infinity, index === victim ? flipAt : -1);
      pump(up, conn, Infinity);
    }
  })().catch(() => {});
  return {
    address: `tcp:127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    get cut() {
      return wasCut;
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await loop;
    },
  };
}

Deno.test("e2e multifd: a page channel cut mid-migration fails cleanly on both sides", async () => {
  const { src, dst } = await pair(2, "tcp", "ab:range=4M");
  await using _s = src;
  await using _d = dst;
  // Connection 2 (a page channel) is cut 1 MiB in: inside the first pass over the a-b range.
  await using proxy = channelCutter(dst.incoming!, 2, 1 << 20);
  await setParams(src, { max_bandwidth: 8 << 20, downtime_limit: 300 });
  await startMigration(src, proxy.address);
  const out = await sourceFinal(src);
  assert.ok(proxy.cut, "the proxy cut the channel");
  assert.equal(out.status, "failed", JSON.stringify(out));
  // The source names the channel (or the destination's reason, when it failed first).
  assert.match(out.error_desc, /multifd channel 1|The destination failed/, out.error_desc);
  // The destination fails on the cut channel or on the main stream the source then closed.
  await assertDestinationFailed(dst);
  await assertSourceIntact(src, 4 << 20);
});

Deno.test("e2e multifd: cancel fails nothing but the migration: the source runs on, the destination can be armed again", async () => {
  const { src, dst } = await pair(4, "tcp", "ab:range=4M");
  await using _s = src;
  await using _d = dst;
  // Slow enough that the cancel comes while pages are moving.
  await setParams(src, { max_bandwidth: 2 << 20 });
  await startMigration(src, dst.incoming!);
  await src.waitFor(
    "/migrations/current",
    (b) => b.status === "active" && (b.multifd?.packets ?? 0) > 0,
    30_000,
  );
  const res = await src.api("DELETE", "/migrations/current");
  assert.ok(res.status < 300, JSON.stringify(res.body));
  const out = await sourceFinal(src);
  assert.equal(out.status, "cancelled", JSON.stringify(out));
  await assertDestinationFailed(dst);
  await assertSourceIntact(src, 4 << 20);
  // And a second migration over the same ferries completes.
  await dst.api("DELETE", "/migrations/incoming");
  await arm(dst, 4, "tcp");
  await migrateAndCompare(src, dst);
  const incoming = await destinationFinal(dst);
  assert.equal(incoming.status, "completed");
});

Deno.test("e2e multifd: over TLS with the migration secret, every channel proves itself and RAM is equal", async () => {
  const pki = await makeTestPki();
  try {
    const src = await FerryProcess.start(["--ram", RAM, "--fill", "random"]);
    await using _s = src;
    await using dst = await startDestination(RAM, "tcp", [
      "--tls-cert",
      pki.server.cert,
      "--tls-key",
      pki.server.key,
      "--migration-secret",
      pki.secret,
    ]);
    await dst.api("DELETE", "/migrations/incoming");
    await arm(dst, 2, "tcp");
    const res = await src.api("PATCH", "/migrations/parameters", {
      tls_ca: pki.ca,
      tls_hostname: SERVER_NAME,
      migration_secret: pki.secret,
      multifd_channels: 2,
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const info = await migrateAndCompare(src, dst);
    assert.ok(info.multifd.packets > 0);
    assert.equal((await dst.api("GET", "/migrations/incoming")).body.refused_peers, undefined);
  } finally {
    await Deno.remove(pki.dir, { recursive: true });
  }
});

Deno.test("e2e multifd: a byte damaged on a page channel fails the migration before the guest runs", async () => {
  const { src, dst } = await pair(2, "tcp", "ab:range=4M");
  await using _s = src;
  await using _d = dst;
  // Connection 1 (a page channel): a byte 300 KiB in, inside the first packets' data.
  await using proxy = channelCutter(dst.incoming!, 1, Infinity, 300 << 10);
  await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 300 });
  await startMigration(src, proxy.address);
  const out = await sourceFinal(src);
  assert.equal(out.status, "failed", JSON.stringify(out));
  const failed = await assertDestinationFailed(dst);
  assert.match(
    failed.error_desc,
    /multifd channel \d .*(damaged|bad packet magic|entry|sync|number)/,
  );
  assert.match(out.error_desc, /The destination failed: Invalid multifd channel/);
  await assertSourceIntact(src, 4 << 20);
});
