/**
 * The qemu profile with a real QEMU 7.2 (docs/ARCHITECTURE.md, "QEMU peers"): QEMU's
 * streams load into a `--peer qemu` ferry byte for byte as QEMU's own analyzer reads
 * them, and what that ferry sends a QEMU loads and runs on, live over tcp and through
 * file:. Skipped (with the reason) where qemu-system-x86_64 or nasm is missing; CI has
 * both (tests/ci_prerequisites_test.ts).
 */
import assert from "node:assert/strict";
import { FerryProcess } from "../../testing/ferry_process.ts";
import { destinationFinal, sourceFinal } from "../helpers/ferries.ts";
import { ANALYZER, analyzerExtract, Qemu, qemuMissing, until } from "../helpers/qemu.ts";

const missing = qemuMissing();
const RAM = "32M";
/** What QEMU 7.2's `-machine pc -m 32M` lists besides pc.ram. */
const ROMS = [
  "/rom@etc/acpi/tables",
  "pc.bios",
  "pc.rom",
  "/rom@etc/table-loader",
  "/rom@etc/acpi/rsdp",
];

function qemuTest(name: string, fn: () => Promise<void>): void {
  Deno.test({
    name: missing ? `${name} (skipped: ${missing})` : name,
    ignore: missing !== null,
    fn,
  });
}

/** A --peer qemu ferry of 32 MiB waiting on `uri`. */
function qemuFerry(
  uri: string,
  extra: string[] = [],
): Promise<FerryProcess & { incoming: string }> {
  return FerryProcess.destination(RAM, uri, ["--peer", "qemu", ...extra]);
}

/** Bytes of one RAM block of a ferry, read through GET /vm/ram in 16 MiB pieces. */
async function ferryBlock(f: FerryProcess, name: string, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  for (let off = 0; off < length; off += 16 << 20) {
    const n = Math.min(16 << 20, length - off);
    const q = new URLSearchParams({ block: name, offset: String(off), length: String(n) });
    const res = await f.fetch(`/vm/ram?${q}`);
    assert.equal(res.status, 200);
    out.set(new Uint8Array(await res.arrayBuffer()), off);
  }
  return out;
}

/**
 * Pages the guest writes before it is migrated: a guest that lost its device state
 * on the way reboots and counts from 0, and the tests see it below this.
 */
const FIRST_PAGES = 1000;

/** A running QEMU with the guest counting; resolves once it wrote FIRST_PAGES pages. */
async function runningSource(): Promise<{ qemu: Qemu; count: number }> {
  const qemu = await Qemu.start(RAM);
  const count = await qemu.guestCountAbove(FIRST_PAGES);
  return { qemu, count };
}

qemuTest(
  "qemu: a QEMU stream saved to a file loads into a --peer qemu ferry equal to QEMU's analyzer's extraction",
  async () => {
    await using src = await Qemu.start(RAM);
    await src.guestCountAbove(0);
    const file = `${src.dir}/qemu.mig`;
    await src.qmp.execute("migrate", { uri: `exec:cat > ${file}` });
    await src.migrationDone();
    await analyzerExtract(file, src.dir);
    await using dst = await qemuFerry(`file:${file}`);
    const done = await destinationFinal(dst);
    assert.equal(done.status, "completed", JSON.stringify(done));
    const vm = (await dst.api("GET", "/vm")).body;
    assert.equal(vm.guest, "qemu");
    assert.equal(vm.run_state, "paused");
    assert.match(vm.not_runnable, /device state ferry keeps but cannot run/);
    assert.equal(vm.qemu.machine, "pc-i440fx-7.2");
    assert.equal(vm.qemu.device_sections, 30);
    assert.deepEqual(vm.qemu.blocks.map((b: { name: string }) => b.name), ["pc.ram", ...ROMS]);
    for (const b of vm.qemu.blocks as { name: string; length: number }[]) {
      const theirs = await Deno.readFile(`${src.dir}/${b.name.replace(/^\//, "")}`);
      assert.equal(theirs.length, b.length, b.name);
      assert.ok(
        (await ferryBlock(dst, b.name, b.length)).every((x, i) => x === theirs[i]),
        `${b.name} differs from the analyzer's extraction`,
      );
    }
    const start = await dst.api("POST", "/vm/start");
    assert.equal(start.status, 409);
    assert.match(start.body.error.message, /migrate it to a QEMU/);
  },
);

qemuTest(
  "qemu: QEMU → ferry live over tcp → QEMU over tcp: the guest runs on after the round trip",
  async () => {
    const { qemu: src, count } = await runningSource();
    await using _src = src;
    await using relay = await qemuFerry("tcp:127.0.0.1:0");
    await src.qmp.execute("migrate", { uri: relay.incoming });
    await src.migrationDone();
    const got = await destinationFinal(relay);
    assert.equal(got.status, "completed", JSON.stringify(got));
    // The source QEMU stopped for good; its guest counted at least `count` pages.
    assert.equal(await src.status(), "postmigrate");
    const left = (await src.guest()).count;
    assert.ok(left >= count);

    await using dst = await Qemu.start(RAM, ["-incoming", "defer"]);
    const uri = await dst.listenTcp();
    const res = await relay.api("POST", "/migrations", { uri });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    const sent = await sourceFinal(relay);
    assert.equal(sent.status, "completed", JSON.stringify(sent));
    await until(
      "the QEMU destination to run",
      async () => (await dst.status()) === "running" ? true : undefined,
    );
    // The guest resumes where it stopped and keeps counting.
    await dst.guestCountsOn(left, FIRST_PAGES);
  },
);

qemuTest("qemu: QEMU → ferry → QEMU through file: snapshots: the guest runs on", async () => {
  const { qemu: src } = await runningSource();
  await using _src = src;
  const inFile = `${src.dir}/in.mig`;
  const outFile = `${src.dir}/out.mig`;
  await src.qmp.execute("migrate", { uri: `exec:cat > ${inFile}` });
  await src.migrationDone();
  const left = (await src.guest()).count;
  await using relay = await qemuFerry(`file:${inFile}`);
  assert.equal((await destinationFinal(relay)).status, "completed");
  const res = await relay.api("POST", "/migrations", { uri: `file:${outFile}` });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal((await sourceFinal(relay)).status, "completed");
  // QEMU's own analyzer reads what ferry wrote.
  const check = await new Deno.Command("python3", {
    args: [ANALYZER, "-f", outFile, "-d", "desc"],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(check.success, new TextDecoder().decode(check.stderr));
  await using dst = await Qemu.start(RAM, ["-incoming", `exec:cat ${outFile}`]);
  await until(
    "the QEMU destination to run",
    async () => (await dst.status()) === "running" ? true : undefined,
  );
  await dst.guestCountsOn(left, FIRST_PAGES);
});

qemuTest(
  "qemu: ferry → QEMU over tcp and through file:: QEMU completes, and its RAM migrated back out equals ferry's",
  async () => {
    await using ferry = await FerryProcess.start([
      "--peer",
      "qemu",
      "--ram",
      RAM,
      "--fill",
      "random",
    ]);
    const mine = await ferryBlock(ferry, "pc.ram", 32 << 20);
    for (const via of ["tcp", "file"] as const) {
      await using dst = await Qemu.start(
        RAM,
        via === "tcp" ? ["-S", "-incoming", "defer"] : ["-S", "-incoming", "defer"],
      );
      let uri: string;
      if (via === "tcp") uri = await dst.listenTcp();
      else uri = `file:${dst.dir}/ferry.mig`;
      const res = await ferry.api("POST", "/migrations", { uri });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      assert.equal((await sourceFinal(ferry)).status, "completed");
      if (via === "file") {
        await dst.qmp.execute("migrate-incoming", { uri: `exec:cat ${dst.dir}/ferry.mig` });
      }
      await dst.migrationDone();
      // Back out of QEMU, into a file its analyzer splits into blocks.
      await dst.qmp.execute("migrate", { uri: `exec:cat > ${dst.dir}/back.mig` });
      await dst.migrationDone();
      await analyzerExtract(`${dst.dir}/back.mig`, dst.dir);
      const theirs = await Deno.readFile(`${dst.dir}/pc.ram`);
      assert.equal(theirs.length, mine.length);
      assert.ok(
        theirs.every((x, i) => x === mine[i]),
        `pc.ram differs after ferry → QEMU (${via})`,
      );
      // The ferry's guest migrated; it may go again.
      await ferry.api("POST", "/vm/stop");
    }
  },
);

qemuTest(
  "qemu: a damaged QEMU stream fails cleanly, and the --peer qemu ferry loads the good one after",
  async () => {
    await using src = await Qemu.start(RAM);
    await src.guestCountAbove(0);
    const file = `${src.dir}/qemu.mig`;
    await src.qmp.execute("migrate", { uri: `exec:cat > ${file}` });
    await src.migrationDone();
    const good = await Deno.readFile(file);
    // Cut inside the vmdescription that ends the stream: the device sections' lengths are unknown.
    await Deno.writeFile(`${src.dir}/cut.mig`, good.subarray(0, good.length - 100));
    await using dst = await qemuFerry(`file:${src.dir}/cut.mig`);
    const failed = await destinationFinal(dst);
    assert.equal(failed.status, "failed");
    assert.match(failed.error_desc, /not followed by EOF and a vmdescription/);
    assert.equal((await dst.api("GET", "/vm")).body.run_state, "inmigrate");
    assert.equal((await dst.api("POST", "/vm/start")).status, 409);
    const again = await dst.api("POST", "/migrations/incoming", {
      uri: `file:${file}`,
      peer: "qemu",
    });
    assert.equal(again.status, 202, JSON.stringify(again.body));
    assert.equal((await destinationFinal(dst)).status, "completed");
    assert.equal((await dst.api("GET", "/vm")).body.qemu.device_sections, 30);
  },
);
