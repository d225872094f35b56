/**
 * Encrypted snapshots end to end (issue 18): a ferry with a snapshot key writes
 * file: and exec: streams encrypted (transports/sealed.ts); a restore with the
 * wrong key, without the key, or from a snapshot with one changed byte or two
 * chunks swapped fails before the guest starts, and the destination can be armed
 * again; the right key restores the guest byte for byte.
 */
import assert from "node:assert/strict";
import { makeTestPki } from "../../testing/certs.ts";
import { type FerryClient, FerryProcess } from "../../testing/ferry_process.ts";
import { SEAL_CHUNK_BYTES, SEAL_HEADER_BYTES } from "../../transports/sealed.ts";
import { FINAL, UNLIMITED } from "../helpers/ferries.ts";

const RAM = "16M";

/** Arms `dst` on `uri` and waits for the incoming migration's final state. */
// deno-lint-ignore no-explicit-any
async function restore(dst: FerryClient, uri: string): Promise<any> {
  const res = await dst.api("POST", "/migrations/incoming", { uri });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return await dst.waitFor("/migrations/incoming", (b) => FINAL.includes(b.status));
}

/** A failed restore: the reason matches, the guest stays unstartable. */
async function assertRestoreFails(dst: FerryClient, uri: string, why: RegExp): Promise<void> {
  const info = await restore(dst, uri);
  assert.equal(info.status, "failed", JSON.stringify(info));
  assert.match(info.error_desc, why);
  assert.equal((await dst.api("GET", "/vm")).body.run_state, "inmigrate");
  assert.equal((await dst.api("POST", "/vm/start")).status, 409, "the guest does not start");
}

Deno.test("sealed snapshots: file: and exec: streams are encrypted with the snapshot key; the wrong key, no key, a changed byte or swapped chunks fail the restore; the right key restores byte for byte", async () => {
  await using pki = await makeTestPki();
  const plain = `${pki.dir}/g.ferry`;
  await using src = await FerryProcess.start([
    "--ram",
    RAM,
    "--fill",
    "random",
    "--paused",
    "--allow-exec",
    "--snapshot-key",
    pki.snapshotKey,
  ]);
  const patched = await src.api("PATCH", "/migrations/parameters", { max_bandwidth: UNLIMITED });
  assert.equal(patched.status, 200);
  const started = await src.api("POST", "/migrations", { uri: `file:${plain}` });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const saved = await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status));
  assert.equal(saved.status, "completed", JSON.stringify(saved));
  const sealed = await Deno.readFile(plain);
  assert.equal(new TextDecoder().decode(sealed.subarray(0, 8)), "FERRYENC");
  assert.ok(sealed.length > 16 << 20, "the whole guest is in it");
  const sourceDigest = (await src.api("GET", "/vm/ram/digest")).body.sha256;

  // The destination holds another key.
  await using dst = await FerryProcess.start([
    "--ram",
    RAM,
    "--no-autostart",
    "--paused",
    "--allow-exec",
    "--snapshot-key",
    pki.otherSnapshotKey,
  ]);
  await assertRestoreFails(dst, `file:${plain}`, /encrypted with another key/);
  // No key at all: the loader is told what the file is.
  await dst.api("PATCH", "/migrations/parameters", { snapshot_key: "" });
  await assertRestoreFails(dst, `file:${plain}`, /encrypted snapshot.*snapshot_key/);
  await dst.api("PATCH", "/migrations/parameters", { snapshot_key: pki.snapshotKey });
  // One changed byte, deep inside chunk 3.
  const changed = sealed.slice();
  changed[SEAL_HEADER_BYTES + 3 * (5 + SEAL_CHUNK_BYTES + 16) + 1000] ^= 0x01;
  await Deno.writeFile(`${pki.dir}/changed.ferry`, changed);
  await assertRestoreFails(dst, `file:${pki.dir}/changed.ferry`, /chunk 3 .*failed authentication/);
  // Chunks 1 and 2 swapped.
  const size = 5 + SEAL_CHUNK_BYTES + 16;
  const at = (i: number) => SEAL_HEADER_BYTES + i * size;
  const swapped = sealed.slice();
  swapped.set(sealed.subarray(at(2), at(2) + size), at(1));
  swapped.set(sealed.subarray(at(1), at(1) + size), at(2));
  await Deno.writeFile(`${pki.dir}/swapped.ferry`, swapped);
  await assertRestoreFails(dst, `file:${pki.dir}/swapped.ferry`, /chunk 1 .*failed authentication/);
  // The right key restores it.
  const ok = await restore(dst, `file:${plain}`);
  assert.equal(ok.status, "completed", JSON.stringify(ok));
  assert.equal((await dst.api("GET", "/vm/ram/digest")).body.sha256, sourceDigest);

  // exec: streams are sealed the same way.
  assert.equal((await src.api("POST", "/vm/start")).status, 200);
  assert.equal((await src.api("POST", "/vm/stop")).status, 200);
  const piped = `${pki.dir}/piped.ferry`;
  const viaExec = await src.api("POST", "/migrations", { uri: `exec:cat > ${piped}` });
  assert.equal(viaExec.status, 202, JSON.stringify(viaExec.body));
  const done = await src.waitFor("/migrations/current", (b) => FINAL.includes(b.status));
  assert.equal(done.status, "completed", JSON.stringify(done));
  const head = (await Deno.readFile(piped)).subarray(0, 8);
  assert.equal(new TextDecoder().decode(head), "FERRYENC");
  const viaCat = await restore(dst, `exec:cat ${piped}`);
  assert.equal(viaCat.status, "completed", JSON.stringify(viaCat));
  assert.equal((await dst.api("GET", "/vm/ram/digest")).body.sha256, sourceDigest);
});
