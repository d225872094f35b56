import assert from "node:assert/strict";
import { VmError } from "../../vm/error.ts";
import { MAX_EXTRA_BLOCK_BYTES, QemuImage } from "../../vm/qemu_image.ts";

const PAGE = 4096;

Deno.test("QemuImage holds pc.ram of its size and takes on the other blocks a stream lists", () => {
  const image = QemuImage.create({ ramSize: "1M", fill: "pattern" });
  assert.deepEqual(image.blocks.map((b) => [b.name, b.length]), [["pc.ram", 1 << 20]]);
  assert.ok(image.blocks[0].bytes.some((x) => x !== 0), "the fill reached pc.ram");
  image.adoptBlocks([{ name: "pc.ram", length: 1 << 20 }, { name: "pc.bios", length: 4 * PAGE }]);
  const bios = image.blocks[1];
  bios.bytes[0] = 7;
  // The same length keeps the block (and its bytes); another length makes it anew; unlisted go.
  image.adoptBlocks([{ name: "pc.bios", length: 4 * PAGE }, { name: "pc.ram", length: 1 << 20 }]);
  assert.equal(image.blocks[1], bios);
  image.adoptBlocks([{ name: "pc.ram", length: 1 << 20 }, { name: "pc.bios", length: 8 * PAGE }]);
  assert.notEqual(image.blocks[1], bios);
  assert.equal(image.blocks[1].bytes[0], 0);
  image.adoptBlocks([{ name: "pc.ram", length: 1 << 20 }]);
  assert.deepEqual(image.blocks.map((b) => b.name), ["pc.ram"]);
});

Deno.test("QemuImage refuses block lists that do not fit it, naming why", () => {
  const image = QemuImage.create({ ramSize: "1M" });
  const cases: [{ name: string; length: number }[], RegExp][] = [
    [[{ name: "pc.bios", length: PAGE }], /lists no "pc.ram"/],
    [[{ name: "pc.ram", length: 2 << 20 }], /--ram 2097152/],
    [
      [{ name: "pc.ram", length: 1 << 20 }, { name: "rom", length: 100 }],
      /not a positive number of pages/,
    ],
    [[{ name: "pc.ram", length: 1 << 20 }, { name: "pc.ram", length: 1 << 20 }], /listed twice/],
    [
      [{ name: "pc.ram", length: 1 << 20 }, {
        name: "vga.vram",
        length: MAX_EXTRA_BLOCK_BYTES + PAGE,
      }],
      /at most/,
    ],
  ];
  for (const [list, why] of cases) {
    assert.throws(
      () => image.adoptBlocks(list),
      (e) => e instanceof VmError && why.test(e.message),
    );
  }
  assert.equal(image.blocks.length, 1);
});

Deno.test("QemuImage never runs, and says why in its info", () => {
  const image = QemuImage.create({ ramSize: "64K" });
  assert.throws(
    () => image.start(),
    (e) => e instanceof VmError && /migrate it to a QEMU/.test(e.message),
  );
  image.setPeerState({ machine: "pc-i440fx-7.2", ramSectionId: 2, devices: [], descriptions: [] });
  const seen: string[] = [];
  image.onRunStateChange((from, to) => seen.push(`${from}>${to}`));
  image.stop("paused");
  const info = image.info();
  assert.equal(info.guest, "qemu");
  assert.equal(info.run_state, "paused");
  assert.match(info.not_runnable, /pc-i440fx-7.2, 0 device sections/);
  assert.deepEqual(info.qemu.blocks, [{ name: "pc.ram", length: 65536 }]);
  assert.deepEqual(seen, ["prelaunch>paused"]);
});
