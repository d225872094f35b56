/**
 * A small stream shaped like QEMU 7.2's (`-machine pc`) for the qemu-profile unit
 * tests: machine type pc-i440fx-7.2, `ram` under section id 2 with pc.ram and a ROM
 * block, an END that starts with CONTINUE (QEMU remembers the block across
 * sections), then device sections without lengths (one with instance 1 and a
 * subsection) that only the vmdescription after EOF describes.
 */
import { StreamBuilder } from "../../testing/stream_builder.ts";
import { pageData } from "../../testing/stream_builder.ts";
import { StreamReader } from "../../engine/format/reader.ts";
import { type LoadResult, loadStream } from "../../engine/incoming.ts";
import { qemuSections } from "../../engine/qemu_profile.ts";
import { QemuImage } from "../../vm/qemu_image.ts";
import { BytesChannel } from "./byte_channels.ts";

export const PAGE = 4096;
/** pc.ram of the test image. */
export const RAM_BYTES = 16 * PAGE;
/** The ROM block listed beside pc.ram. */
export const ROM: readonly [string, number] = ["pc.bios", 4 * PAGE];
export const MACHINE = "pc-i440fx-7.2";

const enc = new TextEncoder();

/** The two device sections: id, name, instance, version, payload, description. */
export const DEVICES = [
  {
    id: 0,
    name: "timer",
    instance: 0,
    version: 2,
    payload: new Uint8Array(24).map((_, i) => i + 1),
    desc: {
      name: "timer",
      instance_id: 0,
      vmsd_name: "timer",
      version: 2,
      fields: [
        { name: "cpu_ticks_offset", type: "int64", size: 8 },
        { name: "unused", type: "unused_buffer", size: 8 },
        { name: "cpu_clock_offset", type: "int64", size: 8 },
      ],
    },
  },
  {
    id: 13,
    name: "dma",
    instance: 1,
    version: 1,
    // 2 field bytes, then the subsection "dma/x" (0x05, len, name, be32 1) and 1 byte;
    // 0x7e and 0x00 inside the payload must not end it.
    payload: new Uint8Array([0x7e, 0x00, 0x05, 5, ...enc.encode("dma/x"), 0, 0, 0, 1, 0x00]),
    desc: {
      name: "dma",
      instance_id: 1,
      vmsd_name: "dma",
      version: 1,
      fields: [{ name: "b", type: "uint8", size: 1, array_len: 2 }],
      subsections: [{
        vmsd_name: "dma/x",
        version: 1,
        fields: [{ name: "c", type: "uint8", size: 1 }],
      }],
    },
  },
] as const;

/** The stream's RAM: block → page → content. */
export const SENT: ReadonlyMap<string, ReadonlyMap<number, Uint8Array>> = new Map([
  ["pc.ram", new Map([[0, pageData(1)], [1, pageData(2)], [5, pageData(3)]])],
  ["pc.bios", new Map([[3, pageData(4)]])],
]);

/** What to change in {@link qemuStream}. */
export interface QemuStreamOptions {
  readonly machine?: string;
  readonly ramBytes?: number;
  readonly rom?: readonly [string, number];
  /** The vmdescription (default: both devices described); null leaves it out. */
  readonly description?: unknown;
  /** Payloads to send instead of DEVICES' (to damage them). */
  readonly payloads?: readonly Uint8Array[];
}

/** The stream, with the offset where its device sections start. */
export function qemuStream(o: QemuStreamOptions = {}): { bytes: Uint8Array; devicesAt: number } {
  const rom = o.rom ?? ROM;
  const b = new StreamBuilder().header().configuration(o.machine ?? MACHINE);
  b.start(2).memSize((o.ramBytes ?? RAM_BYTES) + rom[1], [["pc.ram", o.ramBytes ?? RAM_BYTES], rom])
    .eos().footer(2);
  const ram = SENT.get("pc.ram")!;
  b.part(2).page(0, "pc.ram", ram.get(0)!).page(PAGE, null, ram.get(1)!).eos().footer(2);
  // QEMU's END goes on with the block the PART ended with.
  b.end(2).page(5 * PAGE, null, ram.get(5)!).zero(6 * PAGE, null)
    .page(3 * PAGE, "pc.bios", SENT.get("pc.bios")!.get(3)!).eos().footer(2);
  const devicesAt = b.offset;
  DEVICES.forEach((d, i) => {
    b.full(d.id, d.name, d.version, d.instance).raw(o.payloads?.[i] ?? d.payload).footer(d.id);
  });
  b.eof();
  if (o.description !== null) {
    b.vmdescription(o.description ?? { page_size: PAGE, devices: DEVICES.map((d) => d.desc) });
  }
  return { bytes: b.build(), devicesAt };
}

/** A --peer qemu image of RAM_BYTES waiting for a stream. */
export function qemuImage(ramBytes = RAM_BYTES): QemuImage {
  const image = QemuImage.create({ ramSize: ramBytes });
  image.setRunState("inmigrate");
  return image;
}

/** Loads `bytes` into `image` under the qemu profile, `chunk` bytes per read. */
export function loadInto(image: QemuImage, bytes: Uint8Array, chunk = 4093): Promise<LoadResult> {
  const r = new StreamReader(new BytesChannel(bytes, chunk));
  return loadStream(r, image, { sections: qemuSections(image) }).finally(() => r.release());
}
