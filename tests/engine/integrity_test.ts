import assert from "node:assert/strict";
import {
  DIGEST_ALGORITHM,
  DigestTable,
  IntegrityError,
  locateOne,
  MigrationDigests,
  parseIntegrityRecord,
} from "../../engine/integrity.ts";
import { rng } from "../helpers/rng.ts";

const BLOCKS = [{ name: "pc.ram", pages: 4096 }, { name: "vga.vram", pages: 64 }];

/** Two ends that saw the same seeded sends (pages set, some several times). */
function twoEnds(seed: number): [MigrationDigests, MigrationDigests] {
  const a = new MigrationDigests(BLOCKS);
  const b = new MigrationDigests(BLOCKS);
  const next = rng(seed);
  for (let i = 0; i < 3000; i++) {
    const block = next() < 0.9 ? 0 : 1;
    const page = Math.floor(next() * BLOCKS[block].pages);
    const d = next() < 0.2 ? 0 : (next() * 2 ** 32) >>> 0;
    a.ram[block].table.set(page, d);
    b.ram[block].table.set(page, d);
  }
  a.addDevice("vcpu", 0, 8, 0x1234);
  b.addDevice("vcpu", 0, 8, 0x1234);
  return [a, b];
}

function caught(f: () => void): IntegrityError {
  try {
    f();
  } catch (e) {
    if (e instanceof IntegrityError) return e;
    throw e;
  }
  throw new Error("expected an IntegrityError");
}

Deno.test("DigestTable: the sums depend only on each unit's last digest, not on the order or repeats", () => {
  const a = new DigestTable(100);
  const b = new DigestTable(100);
  a.set(5, 1);
  a.set(7, 2);
  a.set(5, 3); // page 5 sent again: its old digest no longer counts
  b.set(7, 2);
  b.set(5, 3);
  assert.deepEqual(a.sums, b.sums);
  a.set(7, 0);
  b.set(7, 0);
  assert.deepEqual(a.sums, b.sums);
  assert.notDeepEqual(a.sums, new DigestTable(100).sums);
});

Deno.test("MigrationDigests.verify() passes when both ends saw the same content", () => {
  const [src, dst] = twoEnds(1);
  dst.verify(src.record());
});

Deno.test("MigrationDigests.verify() names the block and the one page whose content differs", () => {
  const next = rng(99);
  for (let t = 0; t < 200; t++) {
    const [src, dst] = twoEnds(t + 2);
    const block = t % 2;
    const page = Math.floor(next() * BLOCKS[block].pages);
    dst.ram[block].table.set(page, (dst.ram[block].table.digests[page] + 1 + t) >>> 0);
    const e = caught(() => dst.verify(src.record()));
    assert.equal(e.area, "ram");
    assert.equal(e.where, BLOCKS[block].name);
    assert.equal(e.unit, page, `case ${t}`);
    assert.ok(
      e.message.startsWith(
        `Integrity check failed: RAM block "${BLOCKS[block].name}" page 0x${page.toString(16)} ` +
          `(offset 0x${(page * 4096).toString(16)}) holds other content than the source sent`,
      ),
      e.message,
    );
  }
});

Deno.test("MigrationDigests.verify() reports several differing pages without naming a wrong one", () => {
  const [src, dst] = twoEnds(5);
  dst.ram[0].table.set(10, 0xdead);
  dst.ram[0].table.set(20, 0xbeef);
  const e = caught(() => dst.verify(src.record()));
  assert.equal(e.unit, undefined);
  assert.match(e.message, /RAM block "pc\.ram" holds, in one or more pages, other content/);
});

Deno.test("MigrationDigests.verify() catches a page moved to another offset and a swapped pair", () => {
  const [src, dst] = twoEnds(6);
  const t = dst.ram[0].table;
  const [x, y] = [t.digests[100], t.digests[200]];
  t.set(100, y);
  t.set(200, x);
  if (x !== y) assert.throws(() => dst.verify(src.record()), IntegrityError);
});

Deno.test("MigrationDigests.verify() checks disks and device sections, and that the record covers everything", () => {
  const [src, dst] = twoEnds(7);
  src.trackDisk("disk0", 16).set(3, 77);
  dst.trackDisk("disk0", 16).set(3, 78);
  let e = caught(() => dst.verify(src.record()));
  assert.equal(e.area, "disk");
  assert.equal(e.unit, 3);
  assert.match(e.message, /disk "disk0" chunk 0x3 \(offset 0x300000\) holds other content/);

  const [s2, d2] = twoEnds(8);
  s2.devices[0] = { ...s2.devices[0], digest: 1 };
  e = caught(() => d2.verify(s2.record()));
  assert.equal(e.area, "device");
  assert.match(
    e.message,
    /device state of section "vcpu" \(instance 0\) is not what the source sent/,
  );

  const [s3, d3] = twoEnds(9);
  const record = s3.record();
  e = caught(() => d3.verify({ ...record, ram: record.ram.slice(0, 1) }));
  assert.match(e.message, /no digest for RAM block "vga\.vram"/);
  e = caught(() =>
    d3.verify({ ...record, disk: { device: "disk0", units: 1, sum: 0, weighted: 0, squared: 0 } })
  );
  assert.match(e.message, /digested a disk this migration did not carry/);
});

Deno.test("locateOne() finds the unit from the three sums, or says it cannot (-1)", () => {
  const next = rng(11);
  for (let t = 0; t < 2000; t++) {
    const units = 1 + Math.floor(next() * 300_000);
    const i = Math.floor(next() * units);
    let delta = ((next() * 2 ** 32) >>> 0) | 1;
    if (t % 3 === 0) delta = (delta << (t % 12)) | 0; // even differences too
    const w = i + 1;
    const found = locateOne(delta, Math.imul(w, delta), Math.imul(Math.imul(w, w), delta), units);
    assert.ok(found === i || found === -1, `case ${t}: found ${found}, want ${i}`);
    if (t % 3 !== 0) assert.equal(found, i, `case ${t}: an odd difference always locates`);
  }
  assert.equal(locateOne(0, 5, 5, 10), -1);
});

Deno.test("parseIntegrityRecord() accepts what record() writes and refuses anything malformed", () => {
  const [src] = twoEnds(12);
  const record = JSON.parse(JSON.stringify(src.record()));
  assert.deepEqual(parseIntegrityRecord(record), src.record());
  for (
    const bad of [
      null,
      "x",
      { ...record, version: 2 },
      { ...record, ram: [{ block: "pc.ram", units: 1, sum: -1, weighted: 0, squared: 0 }] },
      { ...record, ram: "x" },
      { ...record, devices: [{ section: "vcpu" }] },
      { ...record, disk: { units: 1 } },
    ]
  ) {
    assert.throws(() => parseIntegrityRecord(bad), IntegrityError, JSON.stringify(bad));
  }
  assert.throws(
    () => parseIntegrityRecord({ ...record, algorithm: "sha256" }),
    new RegExp(`digests with "sha256", this ferry with "${DIGEST_ALGORITHM}"`),
  );
});
