import assert from "node:assert/strict";
import { Engine } from "../../engine/engine.ts";
import { EngineError } from "../../engine/errors.ts";
import { IntegrityError } from "../../engine/integrity.ts";
import { StreamError, StreamReader } from "../../engine/format/reader.ts";
import { loadStream } from "../../engine/incoming.ts";
import { QEMU_RAM_SECTION_ID, qemuSections } from "../../engine/qemu_profile.ts";
import { MemoryTransports } from "../../transports/memory.ts";
import type { Channel } from "../../transports/transport.ts";
import {
  DEFAULT_QEMU_MACHINE,
  MAX_EXTRA_BLOCK_BYTES,
  type QemuImage,
} from "../../vm/qemu_image.ts";
import { TestGuest } from "../../testing/test_guest.ts";
import { BytesChannel, concatBytes } from "../helpers/byte_channels.ts";
import {
  DEVICES,
  loadInto,
  MACHINE,
  PAGE,
  qemuImage,
  qemuStream,
  RAM_BYTES,
  ROM,
  SENT,
} from "../helpers/qemu_stream.ts";

async function rejects(p: Promise<unknown>, why: RegExp): Promise<StreamError> {
  const err = await p.then(() => null, (e) => e);
  assert.ok(err instanceof StreamError, `expected a StreamError, got ${err}`);
  assert.match(err.message, why);
  return err;
}

/** Every page of `image` equals what SENT says (absent: zero). */
function assertRam(image: QemuImage, sent = SENT): void {
  for (const block of image.blocks) {
    for (let p = 0; p < block.pages; p++) {
      const want = sent.get(block.name)?.get(p) ?? new Uint8Array(PAGE);
      const got = block.bytes.subarray(p * PAGE, (p + 1) * PAGE);
      assert.ok(got.every((x, i) => x === want[i]), `${block.name} page ${p}`);
    }
  }
}

Deno.test("the qemu profile loads QEMU's RAM: its machine type, ROM blocks beside pc.ram, CONTINUE across sections", async () => {
  const image = qemuImage();
  const result = await loadInto(image, qemuStream().bytes);
  assert.deepEqual(image.blocks.map((b) => [b.name, b.length]), [["pc.ram", RAM_BYTES], ROM]);
  assertRam(image);
  assert.equal(result.normalPages, 4);
  assert.equal(result.zeroPages, 1);
  assert.equal(image.peer?.machine, MACHINE);
});

Deno.test("without the qemu profile the same stream is refused at its machine type", async () => {
  const r = new StreamReader(new BytesChannel(qemuStream().bytes));
  await rejects(loadStream(r, new TestGuest()), /machine type "pc-i440fx-7.2"/);
  r.release();
});

Deno.test("the qemu profile refuses streams that do not fit the image, before writing RAM", async () => {
  const image = qemuImage();
  await rejects(
    loadInto(image, qemuStream({ ramBytes: 2 * RAM_BYTES }).bytes),
    /"pc.ram" holds 131072 bytes, this ferry's 65536: start it with --ram 131072/,
  );
  await rejects(
    loadInto(image, qemuStream({ rom: ["vga.vram", MAX_EXTRA_BLOCK_BYTES + PAGE] }).bytes),
    /bytes of RAM blocks besides "pc.ram" \(at most/,
  );
  await rejects(loadInto(image, qemuStream({ machine: "ferry-pc" }).bytes), /machine type/);
  assertRam(image, new Map());
  assert.equal(image.peer, null);
  // A page past the end of the ROM block fails at its record; nothing lands outside the block.
  const { bytes } = qemuStream({ rom: ["pc.bios", 3 * PAGE] });
  await rejects(loadInto(image, bytes), /offset 0x3000 beyond block "pc.bios"/);
  assert.equal(image.peer, null);
});

/** Reads a channel to its end. */
async function drain(ch: Channel): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(1 << 16);
  for (;;) {
    const n = await ch.read(buf);
    if (n === null) return concatBytes(parts);
    parts.push(buf.slice(0, n));
  }
}

/** What a qemu-profile engine holding `image` sends (verify off, as `--peer qemu` starts). */
async function emitted(image: QemuImage, verify = false): Promise<Uint8Array> {
  const transports = new MemoryTransports();
  const engine = new Engine({ guest: image, transports, sections: qemuSections(image) });
  engine.setCapabilities({ verify });
  const uri = "tcp:memory:9";
  const listener = await transports.listen(uri);
  const accepted = listener.accept();
  engine.migrate(uri);
  const bytes = await drain(await accepted);
  await engine.migration!.done;
  assert.equal(engine.current().status, "completed", engine.current().error_desc);
  listener.close();
  await engine.close();
  return bytes;
}

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

Deno.test("the qemu profile sends what it loaded as QEMU does: its machine, ram as section 2, devices verbatim, no return path", async () => {
  const image = qemuImage();
  await loadInto(image, qemuStream().bytes);
  image.setRunState("paused");
  const out = await emitted(image);
  const enc = new TextEncoder();
  // Header, then the configuration naming QEMU's machine, then START ram under id 2.
  const machine = enc.encode(MACHINE);
  assert.deepEqual([...out.subarray(8, 13)], [0x07, 0, 0, 0, machine.length]);
  assert.deepEqual([...out.subarray(13, 13 + machine.length)], [...machine]);
  assert.deepEqual(
    [...out.subarray(13 + machine.length, 13 + machine.length + 9)],
    [0x01, 0, 0, 0, QEMU_RAM_SECTION_ID, 3, ...enc.encode("ram")],
  );
  for (const d of DEVICES) {
    const name = enc.encode(d.name);
    const header = [
      0x04,
      0,
      0,
      0,
      d.id,
      name.length,
      ...name,
      0,
      0,
      0,
      d.instance,
      0,
      0,
      0,
      d.version,
    ];
    const at = indexOf(out, new Uint8Array([...header, ...d.payload, 0x7e, 0, 0, 0, d.id]));
    assert.ok(at > 0, `device section ${d.name} is not replayed verbatim`);
  }
  assert.equal(indexOf(out, enc.encode("vcpu")), -1);
  assert.equal(indexOf(out, new Uint8Array([0x08, 0x00, 0x01, 0x00, 0x00])), -1);
  // Another --peer qemu ferry loads it back to the same RAM and devices.
  const copy = qemuImage();
  await loadInto(copy, out);
  assertRam(copy);
  assert.deepEqual(copy.peer, image.peer);
});

Deno.test("a qemu-profile ferry that never loaded a QEMU stream sends pc.ram only, under QEMU 7.2's pc machine", async () => {
  const image = qemuImage();
  image.blocks[0].bytes.set(SENT.get("pc.ram")!.get(1)!, PAGE);
  image.blocks[0].markTouched(1);
  image.setRunState("paused");
  const out = await emitted(image);
  assert.ok(indexOf(out, new TextEncoder().encode(DEFAULT_QEMU_MACHINE)) > 0);
  const copy = qemuImage();
  await loadInto(copy, out);
  assert.deepEqual(copy.blocks.map((b) => b.name), ["pc.ram"]);
  assertRam(copy, new Map([["pc.ram", new Map([[1, SENT.get("pc.ram")!.get(1)!]])]]));
  assert.deepEqual(copy.peer?.devices, []);
});

Deno.test("an incoming migration names its peer: a mismatch with this ferry's profile is refused", async () => {
  const image = qemuImage();
  image.setRunState("paused");
  const qemu = new Engine({
    guest: image,
    transports: new MemoryTransports(),
    sections: qemuSections(image),
  });
  const ferry = new Engine({ guest: new TestGuest(), transports: new MemoryTransports() });
  for (const [engine, peer] of [[qemu, "ferry"], [ferry, "qemu"]] as const) {
    const err = await engine.listenIncoming("tcp:memory:1", peer).then(() => null, (e) => e);
    assert.ok(err instanceof EngineError && err.code === "invalid-parameter", String(err));
    assert.match(err.message, /--peer/);
  }
  assert.equal((await qemu.listenIncoming("tcp:memory:2", "qemu")).status, "listening");
  await qemu.close();
  await ferry.close();
});

Deno.test("a QEMU stream with any one byte of its framing or device tail changed loads or fails with a StreamError", async () => {
  const { bytes, devicesAt } = qemuStream();
  const positions = [
    ...Array.from({ length: 120 }, (_, i) => i),
    ...Array.from({ length: bytes.length - devicesAt }, (_, i) => devicesAt + i),
  ];
  for (const at of positions) {
    for (const flip of [0x01, 0x80, 0xff]) {
      const damaged = bytes.slice();
      damaged[at] ^= flip;
      const image = qemuImage();
      const err = await loadInto(image, damaged).then(() => null, (e) => e);
      assert.ok(err === null || err instanceof StreamError, `byte ${at} ^ ${flip}: ${err}`);
      if (err !== null) assert.equal(image.peer, null, `byte ${at} ^ ${flip}`);
    }
  }
});

Deno.test("between two qemu-profile ferries with verify on, the integrity record covers the ROM blocks and QEMU's devices", async () => {
  const image = qemuImage();
  await loadInto(image, qemuStream().bytes);
  image.setRunState("paused");
  const out = await emitted(image, true);
  const load = (bytes: Uint8Array, into: QemuImage) => {
    const r = new StreamReader(new BytesChannel(bytes, 4093));
    return loadStream(r, into, { sections: qemuSections(into), verify: true }).finally(() =>
      r.release()
    );
  };
  const copy = qemuImage();
  await load(out, copy);
  assertRam(copy);
  // One byte of the ROM page changed on the way: named by the record, nothing kept.
  const at = indexOf(out, SENT.get("pc.bios")!.get(3)!);
  const damaged = out.slice();
  damaged[at + 100] ^= 1;
  const other = qemuImage();
  const err = await load(damaged, other).then(() => null, (e) => e);
  assert.ok(err instanceof IntegrityError, String(err));
  assert.match(err.message, /pc.bios/);
  assert.equal(other.peer, null);
  // So is one byte of a device section's payload.
  const timer = out.slice();
  timer[indexOf(out, DEVICES[0].payload) + 5] ^= 1;
  const third = qemuImage();
  const devErr = await load(timer, third).then(() => null, (e) => e);
  assert.ok(devErr instanceof IntegrityError, String(devErr));
  assert.equal(third.peer, null);
});
