import assert from "node:assert/strict";
import { StreamError } from "../../../engine/format/reader.ts";
import {
  DEVICES,
  loadInto,
  MACHINE,
  PAGE,
  qemuImage,
  qemuStream,
} from "../../helpers/qemu_stream.ts";

async function rejects(p: Promise<unknown>, why: RegExp): Promise<void> {
  const err = await p.then(() => null, (e) => e);
  assert.ok(err instanceof StreamError, `expected a StreamError, got ${err}`);
  assert.match(err.message, why);
}

Deno.test("QEMU device sections load verbatim, any instance, their ends found by the vmdescription after EOF", async () => {
  for (const chunk of [1, 7, 4093, 1 << 20]) {
    const image = qemuImage();
    await loadInto(image, qemuStream().bytes, chunk);
    const peer = image.peer!;
    assert.equal(peer.machine, MACHINE);
    assert.equal(peer.ramSectionId, 2);
    assert.deepEqual(
      peer.devices.map((d) => [d.id, d.name, d.instance, d.version, [...d.payload]]),
      DEVICES.map((d) => [d.id, d.name, d.instance, d.version, [...d.payload]]),
    );
    assert.deepEqual(peer.descriptions, DEVICES.map((d) => d.desc));
  }
});

Deno.test("a QEMU stream cut anywhere in its device sections or vmdescription fails and keeps no device state", async () => {
  const { bytes, devicesAt } = qemuStream();
  const image = qemuImage();
  for (let cut = devicesAt; cut < bytes.length; cut++) {
    const err = await loadInto(image, bytes.subarray(0, cut)).then(() => null, (e) => e);
    assert.ok(err instanceof StreamError, `cut at ${cut}: ${err}`);
    assert.equal(image.peer, null, `cut at ${cut}`);
  }
});

Deno.test("QEMU device sections that do not match their vmdescription fail cleanly", async () => {
  const described = { page_size: PAGE, devices: DEVICES.map((d) => d.desc) };
  const short = DEVICES[0].payload.subarray(0, 23);
  await rejects(
    loadInto(qemuImage(), qemuStream({ payloads: [short, DEVICES[1].payload] }).bytes),
    /"timer" does not end where its vmdescription says/,
  );
  await rejects(
    loadInto(qemuImage(), qemuStream({ description: null }).bytes),
    /not followed by EOF and a vmdescription/,
  );
  await rejects(
    loadInto(
      qemuImage(),
      qemuStream({ description: { ...described, devices: [...described.devices].reverse() } })
        .bytes,
    ),
    /"timer" instance 0 is not the vmdescription's device 0/,
  );
  await rejects(
    loadInto(
      qemuImage(),
      qemuStream({
        description: { ...described, devices: [...described.devices, DEVICES[0].desc] },
      })
        .bytes,
    ),
    /describes 3 devices, the stream carries 2/,
  );
  await rejects(
    loadInto(qemuImage(), qemuStream({ description: { page_size: PAGE } }).bytes),
    /vmdescription has no "devices" list/,
  );
  // A subsection the description lists but the data lacks.
  const noSub = new Uint8Array([0x7e, 0x00, 0x04, 5, 0x64, 0x6d, 0x61, 0x2f, 0x78, 0, 0, 0, 1, 0]);
  await rejects(
    loadInto(qemuImage(), qemuStream({ payloads: [DEVICES[0].payload, noSub] }).bytes),
    /subsection dma\/x not found/,
  );
});
