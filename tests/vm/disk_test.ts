import assert from "node:assert/strict";
import { Disk, DISK_CHUNK, DiskError, incompletePath, sidecarPath } from "../../vm/disk.ts";
import { formatWorkload, parseWorkload } from "../../vm/workload.ts";
import { CliError, parseFlags } from "../../cli.ts";
import { Vm } from "../../vm/vm.ts";

Deno.test("Disk.open() creates a sparse image with an empty sidecar, and checks sizes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ferry-disk-" });
  try {
    const path = `${dir}/a.img`;
    assert.throws(() => Disk.open(path), DiskError);
    assert.throws(() => Disk.open(path, DISK_CHUNK + 512), /multiple of 1 MiB/);
    const disk = Disk.open(path, 4 * DISK_CHUNK);
    assert.equal(disk.chunks, 4);
    assert.equal(disk.incomplete, false);
    assert.deepEqual([...Deno.readFileSync(sidecarPath(path))], [0]);
    disk.writeChunk(2, new Uint8Array(DISK_CHUNK).fill(7));
    disk.markIncomplete();
    assert.ok(disk.incomplete);
    await disk.commit();
    assert.equal(disk.incomplete, false);
    await assert.rejects(Deno.stat(incompletePath(path)), Deno.errors.NotFound);
    disk.close();
    assert.throws(() => Disk.open(path, 8 * DISK_CHUNK), /not the --disk-size/);
    const again = Disk.open(path);
    assert.equal(again.written[0], 1 << 2, "the sidecar survives a reopen");
    assert.equal(again.knownZero(0), false, "an existing image has no known holes");
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("random workload takes disk=RATE, which needs a disk", async () => {
  const spec = parseWorkload("random:rate=1M,disk=5M");
  assert.deepEqual(spec, { kind: "random", rate: 1 << 20, hot: null, bytes: 8, disk: 5 << 20 });
  assert.equal(formatWorkload(spec), "random:rate=1M,disk=5M");
  assert.deepEqual(parseWorkload("random"), {
    kind: "random",
    rate: 50 << 20,
    hot: null,
    bytes: 8,
  });
  assert.throws(() => parseFlags(["--workload", "random:disk=1M"]), CliError);
  assert.throws(() => parseFlags(["--disk-size", "1G"]), /needs --disk/);
  assert.throws(() => parseFlags(["--disk", "x", "--disk-size", "1000K"]), /multiple of 1M/);
  const config = parseFlags(["--disk", "/tmp/x.img", "--disk-size", "1G"]);
  assert.equal(config.disk, "/tmp/x.img");
  assert.equal(config.diskSize, 1 << 30);
  await assert.rejects(
    Vm.create({ ramSize: "1M", workload: "random:disk=1M" }),
    /needs a disk/,
  );
});
