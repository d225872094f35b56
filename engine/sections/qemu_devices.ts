/**
 * QEMU's device sections under the qemu profile (docs/ARCHITECTURE.md, "QEMU
 * peers"): loaded verbatim into a {@link QemuImage} and replayed verbatim to a
 * QEMU. A device section carries no length, and the vmdescription that gives the
 * lengths comes after EOF; QEMU sends every device section after the last RAM
 * END. So at the first device section the loader reads the rest of the stream
 * (at most {@link MAX_DEVICE_TAIL} bytes, in the reader's buffer), finds EOF and
 * the vmdescription at its end, splits the sections with the description
 * (qemu_vmsd.ts), and checks each footer; the main loop then reads the sections
 * one by one as usual, each matched against that plan. Nothing is kept until the
 * whole stream checked out (`commit`).
 * @module
 */
import type { QemuDeviceSection, QemuImage } from "../../vm/qemu_image.ts";
import { Section as SectionType } from "../format/constants.ts";
import { READ_BUFFER_SIZE, StreamError, type StreamReader } from "../format/reader.ts";
import type { LoadContext, Section, SectionHeader, SectionLoader } from "./section.ts";
import { VmsdError, vmsdPayloadSize } from "./qemu_vmsd.ts";

/** The registry name of this section; it never appears in a stream. */
export const QEMU_DEVICES = "qemu-devices";
/** Most bytes of device sections, EOF and vmdescription the loader buffers. */
export const MAX_DEVICE_TAIL = READ_BUFFER_SIZE;

/** What the qemu profile's loaders of one load share: what the ram loader saw. */
export interface QemuLoadState {
  ramSectionId?: number;
}

/** One device section found in the tail: its header and payload size. */
interface Planned extends SectionHeader {
  readonly size: number;
}

/**
 * The device-sections section of the qemu profile: its saver replays the image's
 * captured sections (none when the image holds none), its loader takes any device
 * section ferry does not know. `loads` carries what the profile's ram loader saw.
 */
export function qemuDevicesSection(
  image: QemuImage,
  loads: WeakMap<LoadContext, QemuLoadState>,
): Section {
  return {
    name: QEMU_DEVICES,
    version: 0,
    kind: "device",
    saver: () => {
      const peer = image.peer;
      if (!peer || peer.devices.length === 0) return null;
      return {
        state: () => new Uint8Array(0),
        sections: () => peer.devices,
        describe: () => [...peer.descriptions],
      };
    },
    loader: (ctx) => new QemuDevicesLoader(image, () => loads.get(ctx) ?? {}),
  };
}

/** Loads QEMU's device sections, as planned from the stream's tail. */
class QemuDevicesLoader implements SectionLoader {
  readonly #image: QemuImage;
  readonly #state: () => QemuLoadState;
  #machine: string | null = null;
  #plan: Planned[] | null = null;
  #descriptions: Record<string, unknown>[] = [];
  readonly #got: QemuDeviceSection[] = [];

  constructor(image: QemuImage, state: () => QemuLoadState) {
    this.#image = image;
    this.#state = state;
  }

  configuration(machine: string): void {
    this.#machine = machine;
  }

  async load(
    r: StreamReader,
    _phase: "start" | "part" | "end" | "full",
    at: number,
    header?: SectionHeader,
  ): Promise<Uint8Array> {
    if (!header) throw new StreamError(at, "a QEMU device section without its header");
    this.#plan ??= await this.#planTail(r, at, header);
    const next = this.#plan[this.#got.length];
    if (
      !next || next.id !== header.id || next.name !== header.name ||
      next.instance !== header.instance || next.version !== header.version
    ) {
      throw new StreamError(at, `device section "${header.name}" is not where the plan put it`);
    }
    await r.need(next.size);
    const payload = r.take(next.size).slice();
    this.#got.push({ ...header, payload });
    return payload;
  }

  finish(at: number): void {
    if (this.#plan !== null && this.#got.length !== this.#plan.length) {
      throw new StreamError(
        at,
        `EOF after ${this.#got.length} of the ${this.#plan.length} device sections`,
      );
    }
  }

  commit(): Promise<void> {
    this.#image.setPeerState({
      machine: this.#machine ?? "",
      ramSectionId: this.#state().ramSectionId ?? 0,
      devices: this.#got,
      descriptions: this.#descriptions,
    });
    return Promise.resolve();
  }

  /**
   * Reads the rest of the stream into the reader's buffer (not consuming it) and
   * splits it: `first`'s payload, its footer, then FULL sections up to EOF and
   * the vmdescription, which must end the stream.
   */
  async #planTail(r: StreamReader, at: number, first: SectionHeader): Promise<Planned[]> {
    for (;;) {
      if (r.avail >= MAX_DEVICE_TAIL) {
        throw new StreamError(
          at,
          `QEMU's device sections and vmdescription exceed ${MAX_DEVICE_TAIL} bytes`,
        );
      }
      try {
        await r.need(r.avail + 1);
      } catch (e) {
        if (e instanceof StreamError) break; // the end of the stream
        throw e;
      }
    }
    const tail = r.buf.slice(r.pos, r.end);
    const base = r.offset;
    const view = new DataView(tail.buffer);
    const eof = findDescription(tail, view);
    if (eof < 0) {
      throw new StreamError(
        at,
        "QEMU device sections not followed by EOF and a vmdescription ending the stream: " +
          "without it their lengths are unknown",
      );
    }
    let description: unknown;
    try {
      description = JSON.parse(new TextDecoder().decode(tail.subarray(eof + 6)));
    } catch (e) {
      throw new StreamError(base + eof + 1, "vmdescription is not valid JSON", { cause: e });
    }
    const devices = (description as { devices?: unknown })?.devices;
    if (!Array.isArray(devices)) {
      throw new StreamError(base + eof + 1, `vmdescription has no "devices" list`);
    }
    const plan: Planned[] = [];
    let header = first;
    let pos = 0;
    let headerAt = at;
    for (;;) {
      const desc = devices[plan.length];
      if (
        !isRecord(desc) || desc.name !== header.name || desc.instance_id !== header.instance
      ) {
        throw new StreamError(
          headerAt,
          `device section "${header.name}" instance ${header.instance} is not the vmdescription's ` +
            `device ${plan.length}`,
        );
      }
      let size: number;
      try {
        size = vmsdPayloadSize(desc, tail.subarray(0, eof), pos);
      } catch (e) {
        if (e instanceof VmsdError) throw new StreamError(base + pos, e.message, { cause: e });
        throw e;
      }
      plan.push({ ...header, size });
      this.#descriptions.push(desc);
      pos += size;
      if (
        pos + 5 > eof || tail[pos] !== SectionType.FOOTER || view.getUint32(pos + 1) !== header.id
      ) {
        throw new StreamError(
          base + pos,
          `device section "${header.name}" does not end where its vmdescription says`,
        );
      }
      pos += 5;
      if (pos === eof) break;
      headerAt = base + pos;
      if (tail[pos] !== SectionType.FULL || pos + 6 > eof) {
        throw new StreamError(
          headerAt,
          `expected a device section (0x04) after QEMU's device sections began, found 0x${
            tail[pos].toString(16)
          }`,
        );
      }
      const len = tail[pos + 5];
      if (pos + 6 + len + 8 > eof) {
        throw new StreamError(headerAt, "device section header runs past EOF");
      }
      header = {
        id: view.getUint32(pos + 1),
        name: new TextDecoder().decode(tail.subarray(pos + 6, pos + 6 + len)),
        instance: view.getUint32(pos + 6 + len),
        version: view.getUint32(pos + 10 + len),
      };
      pos += 14 + len;
    }
    if (plan.length !== devices.length) {
      throw new StreamError(
        base + eof,
        `the vmdescription describes ${devices.length} devices, the stream carries ${plan.length}`,
      );
    }
    return plan;
  }
}

/**
 * The offset in `tail` of the EOF byte followed by a vmdescription
 * (`0x06, be32 len, JSON`) that ends `tail` exactly, or -1.
 */
function findDescription(tail: Uint8Array, view: DataView): number {
  for (let p = tail.length - 6; p >= 0; p--) {
    if (tail[p] !== SectionType.EOF || tail[p + 1] !== SectionType.VMDESCRIPTION) continue;
    if (view.getUint32(p + 2) === tail.length - p - 6 && tail[p + 6] === 0x7b) return p;
  }
  return -1;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}
