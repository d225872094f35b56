/**
 * The qemu profile (`--peer qemu`): the sections a ferry holding a
 * {@link QemuImage} speaks, so it loads what a real QEMU (7.2) sends and sends
 * what a QEMU loads (docs/ARCHITECTURE.md, "QEMU peers"):
 * - any QEMU machine type is accepted and kept, and written again on the way out;
 * - `ram` goes out under QEMU's section id (2 on 7.2's pc, or the id the loaded
 *   stream used) with the image's blocks, pc.ram and the ROMs the stream listed,
 *   in plain QEMU records only (no XBZRLE, compressed runs or references);
 * - the blocks a stream lists are taken on (pc.ram must match `--ram`), and a
 *   CONTINUE record may follow a section boundary, as QEMU's loader allows;
 * - device sections are kept and replayed verbatim (sections/qemu_devices.ts);
 * - no return path is opened: a QEMU destination answers none of ferry's.
 * @module
 */
import type { QemuImage } from "../vm/qemu_image.ts";
import { DEFAULT_QEMU_MACHINE } from "../vm/qemu_image.ts";
import { VmError } from "../vm/error.ts";
import {
  MACHINE_TYPE,
  PAGE_SIZE,
  RAM_FLAG_MASK,
  RAM_SECTION_VERSION,
  RamFlag,
  SectionName,
  X86_MACHINE_TYPE,
} from "./format/constants.ts";
import { StreamError, type StreamReader } from "./format/reader.ts";
import { DigestTable } from "./integrity.ts";
import { RamLoader, type RamLoadStats, RamSaver } from "./sections/ram.ts";
import { qemuDevicesSection, type QemuLoadState } from "./sections/qemu_devices.ts";
import {
  type LoadContext,
  type Section,
  type SectionHeader,
  type SectionLoader,
  SectionRegistry,
} from "./sections/section.ts";
import { TWO32 } from "./sections/ram_records.ts";

/** The `ram` section's id in a QEMU 7.2 `pc` stream (QEMU numbers its handlers in registration order). */
export const QEMU_RAM_SECTION_ID = 2;
/** Most RAM blocks a stream's block list may name. */
const MAX_BLOCKS = 64;

/** The registry of a ferry whose guest is `image`, a QEMU guest held (`--peer qemu`). */
export function qemuSections(image: QemuImage): SectionRegistry {
  const loads = new WeakMap<LoadContext, QemuLoadState>();
  const devices = qemuDevicesSection(image, loads);
  return new SectionRegistry([qemuRamSection(image, loads), devices], DEFAULT_QEMU_MACHINE, {
    peer: "qemu",
    acceptsMachine: (machine) =>
      machine !== MACHINE_TYPE && machine !== X86_MACHINE_TYPE && machine.length > 0,
    outgoingMachine: () => image.peer?.machine || DEFAULT_QEMU_MACHINE,
    // The device sections go out under their own ids (DeviceSaver.sections).
    sectionId: (name, index) =>
      name === SectionName.RAM ? image.peer?.ramSectionId || QEMU_RAM_SECTION_ID : index,
    otherDevices: devices,
    returnPath: false,
  });
}

/** QEMU's `ram` section over a QEMU image's blocks. */
function qemuRamSection(image: QemuImage, loads: WeakMap<LoadContext, QemuLoadState>): Section {
  return {
    name: SectionName.RAM,
    version: RAM_SECTION_VERSION,
    kind: "live",
    // QEMU's own records only, whatever the capabilities say.
    saver: (ctx) =>
      new RamSaver(ctx.guest.blocks, ctx.now, {
        ...(ctx.digests ? { digests: ctx.digests } : {}),
        ...(ctx.snapshot ? { zeroedAsPages: true } : {}),
      }),
    loader: (ctx) => {
      const state: QemuLoadState = {};
      loads.set(ctx, state);
      return new QemuRamLoader(image, ctx, state);
    },
  };
}

/**
 * Takes on the blocks the START payload lists (QemuImage.adoptBlocks), then loads
 * every payload with a RamLoader over them that keeps CONTINUE across sections.
 */
class QemuRamLoader implements SectionLoader {
  #inner: RamLoader | null = null;

  constructor(
    readonly image: QemuImage,
    readonly ctx: LoadContext,
    readonly state: QemuLoadState,
  ) {}

  async load(
    r: StreamReader,
    phase: "start" | "part" | "end" | "full",
    at: number,
    header?: SectionHeader,
  ): Promise<void> {
    if (phase === "start") {
      this.state.ramSectionId = header?.id;
      const list = await peekBlockList(r, at);
      if (list !== null) {
        try {
          this.image.adoptBlocks(list);
        } catch (e) {
          if (e instanceof VmError) throw new StreamError(at, e.message, { cause: e });
          throw e;
        }
      }
      const digests = this.ctx.digests;
      if (digests) {
        // The digest tables follow the blocks this stream brought.
        digests.ram.splice(
          0,
          digests.ram.length,
          ...this.image.blocks.map((b) => ({ block: b.name, table: new DigestTable(b.pages) })),
        );
      }
      this.#inner = new RamLoader(this.image.blocks, undefined, digests, this.ctx.maxRecords, {
        continueAcrossSections: true,
      });
    }
    if (this.#inner === null) throw new StreamError(at, `"ram" section data before its START`);
    await this.#inner.load(r, phase);
  }

  /** What the RamLoader applied so far. */
  get stats(): RamLoadStats {
    return this.#inner?.stats ??
      { zeroPages: 0, normalPages: 0, xbzrlePages: 0, compressedPages: 0, refPages: 0 };
  }

  finish(at: number): void {
    if (this.#inner === null) throw new StreamError(at, `stream ended without a "ram" section`);
    this.#inner.finish(at);
  }
}

/**
 * The block list at the start of a `ram` START payload (`be64 total | MEM_SIZE`,
 * then `u8 len, name, be64 length` per block), read without consuming it; null
 * when the payload does not start with one (the RamLoader then says what is wrong).
 */
async function peekBlockList(
  r: StreamReader,
  at: number,
): Promise<{ name: string; length: number }[] | null> {
  await r.need(8);
  const hi = r.view.getUint32(r.pos);
  const lo = r.view.getUint32(r.pos + 4);
  if ((lo & RAM_FLAG_MASK) !== RamFlag.MEM_SIZE) return null;
  const total = hi * TWO32 + ((lo & ~RAM_FLAG_MASK) >>> 0);
  const list: { name: string; length: number }[] = [];
  let off = 8;
  let sum = 0;
  while (sum < total) {
    if (list.length === MAX_BLOCKS) {
      throw new StreamError(at, `RAM block list of more than ${MAX_BLOCKS} blocks`);
    }
    await r.need(off + 1);
    const len = r.buf[r.pos + off];
    await r.need(off + 1 + len + 8);
    const name = new TextDecoder().decode(r.buf.subarray(r.pos + off + 1, r.pos + off + 1 + len));
    const length = r.view.getUint32(r.pos + off + 1 + len) * TWO32 +
      r.view.getUint32(r.pos + off + 5 + len);
    if (len === 0 || length === 0 || length % PAGE_SIZE !== 0) {
      throw new StreamError(at, `RAM block "${name}" listed with length 0x${length.toString(16)}`);
    }
    list.push({ name, length });
    sum += length;
    off += 1 + len + 8;
  }
  if (sum !== total) {
    throw new StreamError(
      at,
      `RAM block list adds up to 0x${sum.toString(16)} bytes, its total says 0x${
        total.toString(16)
      }`,
    );
  }
  return list;
}
