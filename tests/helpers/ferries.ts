/**
 * Helpers for end-to-end fault, soak and concurrency tests with real ferry
 * processes: start sources and destinations, migrate, and check what the issue
 * promises after every fault (the source guest intact and running, the
 * destination failed and re-armable, a second migration byte-exact).
 */
import assert from "node:assert/strict";
import { FerryClient, FerryProcess } from "../../testing/ferry_process.ts";
import { abInvariantViolation } from "../../vm/ab_check.ts";

/** Unlimited in practice: 100 GB/s. */
export const UNLIMITED = 100_000_000_000;

/** Final migration states. */
export const FINAL = ["completed", "failed", "cancelled"];

/** A migration transport the tests use. */
export type Kind = "tcp" | "unix";

/** A fresh listen URI: tcp port 0, or a socket in a new temporary directory. */
export async function listenUri(kind: Kind): Promise<string> {
  if (kind === "tcp") return "tcp:127.0.0.1:0";
  const dir = await Deno.makeTempDir({ prefix: "ferry-fault-" });
  return `unix:${dir}/in.sock`;
}

/** Removes the temporary directory of a unix: URI made by {@link listenUri}. */
export async function cleanupUri(uri: string | undefined): Promise<void> {
  if (uri?.startsWith("unix:")) {
    await Deno.remove(uri.slice(5).replace(/\/[^/]+$/, ""), { recursive: true }).catch(() => {});
  }
}

/** Starts a destination (paused after loading) waiting on a fresh URI of `kind`. */
export async function startDestination(
  ram: string,
  kind: Kind = "tcp",
  extra: string[] = [],
): Promise<FerryProcess> {
  // FerryProcess.destination() fails unless the ferry printed its incoming address.
  return await FerryProcess.destination(ram, await listenUri(kind), extra);
}

/** Arms `dst` again on a fresh URI of `kind`; returns the address to migrate to. */
export async function rearm(dst: FerryClient, kind: Kind = "tcp"): Promise<string> {
  const uri = await listenUri(kind);
  const res = await dst.api("POST", "/migrations/incoming", { uri });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  dst.incoming = res.body.address;
  return res.body.address;
}

/** Sets parameters on a ferry (asserting 200). */
export async function setParams(
  f: FerryClient,
  params: Record<string, number | boolean>,
): Promise<void> {
  const res = await f.api("PATCH", "/migrations/parameters", params);
  assert.equal(res.status, 200, JSON.stringify(res.body));
}

/** Starts a migration to `uri` (asserting 202). */
export async function startMigration(src: FerryClient, uri: string): Promise<void> {
  const res = await src.api("POST", "/migrations", { uri });
  assert.equal(res.status, 202, JSON.stringify(res.body));
}

/** Waits for the source's migration to reach a final state. */
// deno-lint-ignore no-explicit-any
export function sourceFinal(src: FerryClient, timeoutMs = 60_000): Promise<any> {
  return src.waitFor("/migrations/current", (b) => FINAL.includes(b.status), timeoutMs);
}

/** Waits for the destination's incoming migration to leave listening/active. */
// deno-lint-ignore no-explicit-any
export function destinationFinal(dst: FerryClient, timeoutMs = 60_000): Promise<any> {
  return dst.waitFor(
    "/migrations/incoming",
    (b) => b.status !== "active" && b.status !== "listening",
    timeoutMs,
  );
}

/** Reads byte 0 of the pages of [0, range) through GET /vm/ram. */
export async function readRange(f: FerryClient, range: number): Promise<Uint8Array> {
  const res = await f.fetch(`/vm/ram?offset=0&length=${range}`);
  assert.equal(res.status, 200);
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * The source survived a fault: its run state is `running` again (it was running),
 * and, stopped for a consistent look, byte 0 of its ab range still satisfies the
 * ab invariant. Leaves the guest running.
 */
export async function assertSourceIntact(src: FerryClient, abRange?: number): Promise<void> {
  const vm = (await src.api("GET", "/vm")).body;
  assert.equal(vm.run_state, "running", "the source guest runs again after the fault");
  if (abRange === undefined) return;
  assert.equal((await src.api("POST", "/vm/stop")).status, 200);
  const bytes = await readRange(src, abRange);
  assert.equal(abInvariantViolation(bytes, abRange / 4096), null, "ab invariant on the source");
  assert.equal((await src.api("POST", "/vm/start")).status, 200);
  await src.waitFor("/vm", (b) => b.ops > vm.ops, 10_000);
}

/**
 * The destination failed with a reason, holds no startable guest (POST /vm/start
 * answers 409) and accepts a new incoming migration.
 */
// deno-lint-ignore no-explicit-any
export async function assertDestinationFailed(dst: FerryClient, kind: Kind = "tcp"): Promise<any> {
  const info = await destinationFinal(dst);
  assert.equal(info.status, "failed", JSON.stringify(info));
  assert.ok(info.error_desc, "the destination says why it failed");
  assert.equal((await dst.api("GET", "/vm")).body.run_state, "inmigrate");
  const start = await dst.api("POST", "/vm/start");
  assert.equal(start.status, 409, "a partial guest cannot start");
  assert.equal(start.body.error.code, "guest-incomplete");
  await rearm(dst, kind);
  assert.equal((await dst.api("GET", "/migrations/incoming")).body.status, "listening");
  return info;
}

/**
 * Migrates `src` to `dst` (already listening) and checks the RAM digests of the
 * stopped guests are equal. Returns the source's final info.
 */
export async function migrateAndCompare(
  src: FerryClient,
  dst: FerryClient,
  uri = dst.incoming!,
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  await setParams(src, { max_bandwidth: UNLIMITED, downtime_limit: 300 });
  await startMigration(src, uri);
  const info = await sourceFinal(src, 120_000);
  assert.equal(info.status, "completed", JSON.stringify(info));
  const incoming = await destinationFinal(dst);
  assert.equal(incoming.status, "completed", JSON.stringify(incoming));
  const a = (await src.api("GET", "/vm/ram/digest")).body;
  const b = (await dst.api("GET", "/vm/ram/digest")).body;
  assert.equal(a.run_state, "postmigrate");
  assert.equal(b.run_state, "paused");
  assert.equal(b.sha256, a.sha256, "destination RAM equals source RAM");
  return info;
}

/** Kills a ferry with SIGKILL, tolerating one that already exited. */
export async function killHard(f: FerryProcess): Promise<void> {
  await f.kill("SIGKILL");
}
