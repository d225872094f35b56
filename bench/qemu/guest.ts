/**
 * The benchmark guest: `guest.asm` (a Multiboot v1 kernel, see its header comment) is
 * assembled with nasm once and cached; every run patches the workload parameters into
 * a copy of the image, which QEMU boots with `-kernel`. The guest reports progress in a
 * status page the host reads through the monitor (`xp`).
 */

import type { GuestWorkload } from "./types.ts";

/** Guest-physical address the image is loaded at (below the 1 MiB workload region). */
export const GUEST_LOAD_ADDR = 0x10000;
/** Guest-physical address of the status page the guest writes (image page 1). */
export const GUEST_STATUS_ADDR = GUEST_LOAD_ADDR + 0x1000;
/** Where the `ab` and `dirty` regions start: RAM below 1 MiB holds BIOS areas and the image. */
export const WORKLOAD_BASE = 0x100000;
/** Size of the assembled image (two pages: code, status). */
export const GUEST_IMAGE_SIZE = 0x2000;

/** Multiboot v1 header magic. */
export const MULTIBOOT_MAGIC = 0x1badb002;
/** Multiboot flag: the a.out-kludge address fields are valid. */
export const MULTIBOOT_AOUT_KLUDGE = 0x00010000;
/** "FRYP": marks the parameter block. */
export const PARAM_MAGIC = 0x50595246;
/** "FRYR": the guest writes it to the status page once its workload loop runs. */
export const READY_MAGIC = 0x52595246;

/** Byte offsets of the parameter block inside the image (see guest.asm). */
export const ParamOffset = {
  magic: 32,
  mode: 36,
  base: 40,
  end: 44,
  pagesPerSecond: 48,
} as const;

/** The guest's workload selector (the `mode` parameter). */
export const GuestMode = { idle: 0, ab: 1, dirty: 2 } as const;
/** One of {@link GuestMode}'s values. */
export type GuestMode = typeof GuestMode[keyof typeof GuestMode];

/** What gets patched into the image. Addresses are guest-physical, 32-bit. */
export interface GuestParams {
  readonly mode: GuestMode;
  readonly base: number;
  readonly end: number;
  readonly pagesPerSecond: number;
}

/** The guest could not be built (nasm missing or failing) or its image is malformed. */
export class GuestImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestImageError";
  }
}

const PAGE = 4096;

/**
 * The end (exclusive) of RAM a 32-bit guest without paging can reach on QEMU's `pc`
 * machine: all of it below 3.5 GiB, else the 3 GiB QEMU keeps below 4 GiB.
 */
export function lowRamEnd(ramBytes: number): number {
  return ramBytes >= 0xe0000000 ? 0xc0000000 : ramBytes;
}

/**
 * The parameters for a running workload: `ab` covers `rangeBytes` from 1 MiB, `dirty`
 * spreads over all reachable RAM above 1 MiB; both are clipped to reachable RAM.
 */
export function guestParamsFor(workload: GuestWorkload, ramBytes: number): GuestParams {
  const top = lowRamEnd(ramBytes);
  if (top <= WORKLOAD_BASE + PAGE) {
    throw new GuestImageError(`guest RAM ${ramBytes} too small (need more than 1 MiB + 4 KiB)`);
  }
  switch (workload.kind) {
    case "paused":
    case "idle":
      return { mode: GuestMode.idle, base: 0, end: 0, pagesPerSecond: 0 };
    case "ab": {
      const range = Math.floor(workload.rangeBytes / PAGE) * PAGE;
      if (range < PAGE) throw new GuestImageError(`ab range ${workload.rangeBytes} < one page`);
      return {
        mode: GuestMode.ab,
        base: WORKLOAD_BASE,
        end: Math.min(WORKLOAD_BASE + range, top),
        pagesPerSecond: 0,
      };
    }
    case "dirty": {
      const pps = Math.round(workload.bytesPerSecond / PAGE);
      if (!(pps >= 1) || pps > 0xffffffff) {
        throw new GuestImageError(`dirty rate ${workload.bytesPerSecond} B/s out of range`);
      }
      return { mode: GuestMode.dirty, base: WORKLOAD_BASE, end: top, pagesPerSecond: pps };
    }
  }
}

/** Where and what the image's Multiboot header says (for checks and tests). */
export interface MultibootHeader {
  readonly offset: number;
  readonly flags: number;
  readonly checksumValid: boolean;
  readonly headerAddr: number;
  readonly loadAddr: number;
  readonly loadEndAddr: number;
  readonly bssEndAddr: number;
  readonly entryAddr: number;
}

/** Finds the Multiboot v1 header the way a loader does: 4-aligned, in the first 8 KiB. */
export function findMultibootHeader(image: Uint8Array): MultibootHeader | undefined {
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const limit = Math.min(8192, image.byteLength) - 12;
  for (let off = 0; off <= limit; off += 4) {
    if (dv.getUint32(off, true) !== MULTIBOOT_MAGIC) continue;
    const flags = dv.getUint32(off + 4, true);
    const checksum = dv.getUint32(off + 8, true);
    const u32 = (o: number) => off + o + 4 <= image.byteLength ? dv.getUint32(off + o, true) : 0;
    return {
      offset: off,
      flags,
      checksumValid: ((MULTIBOOT_MAGIC + flags + checksum) >>> 0) === 0,
      headerAddr: u32(12),
      loadAddr: u32(16),
      loadEndAddr: u32(20),
      bssEndAddr: u32(24),
      entryAddr: u32(28),
    };
  }
  return undefined;
}

/** Returns a copy of `image` with `params` written into its parameter block. */
export function patchGuest(image: Uint8Array, params: GuestParams): Uint8Array {
  if (image.byteLength !== GUEST_IMAGE_SIZE) {
    throw new GuestImageError(`guest image is ${image.byteLength} bytes, want ${GUEST_IMAGE_SIZE}`);
  }
  const out = image.slice();
  const dv = new DataView(out.buffer);
  if (dv.getUint32(ParamOffset.magic, true) !== PARAM_MAGIC) {
    throw new GuestImageError(`guest image has no parameter block at ${ParamOffset.magic}`);
  }
  for (const [name, v] of [["base", params.base], ["end", params.end]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff || v % PAGE !== 0) {
      throw new GuestImageError(`guest ${name} ${v} is not a page-aligned 32-bit address`);
    }
  }
  if (params.mode !== GuestMode.idle && params.end <= params.base) {
    throw new GuestImageError(`guest region [${params.base}, ${params.end}) is empty`);
  }
  dv.setUint32(ParamOffset.mode, params.mode, true);
  dv.setUint32(ParamOffset.base, params.base, true);
  dv.setUint32(ParamOffset.end, params.end, true);
  dv.setUint32(ParamOffset.pagesPerSecond, params.pagesPerSecond >>> 0, true);
  return out;
}

/** What the guest wrote to its status page. */
export interface GuestStatus {
  /** The workload loop is running. */
  readonly ready: boolean;
  /** TSC ticks in the 50 ms PIT window (`dirty` only; 0 otherwise). */
  readonly tscPer50ms: number;
  /** `ab`: passes over the range; `dirty`: pages written. */
  readonly count: number;
  /** `dirty`: TSC ticks between two page writes. */
  readonly ticksPerPage: number;
}

/** The monitor command that dumps the status page's first six words. */
export const STATUS_XP_COMMAND = `xp /6wx 0x${GUEST_STATUS_ADDR.toString(16)}`;

/** Parses the output of {@link STATUS_XP_COMMAND} (`addr: 0x… 0x… …` lines). */
export function parseStatus(xpOutput: string): GuestStatus {
  const words: number[] = [];
  for (const line of xpOutput.split(/\r?\n/)) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    for (const tok of line.slice(colon + 1).trim().split(/\s+/)) {
      if (/^0x[0-9a-f]+$/i.test(tok)) words.push(parseInt(tok, 16));
    }
  }
  if (words.length < 6) throw new GuestImageError(`cannot parse guest status: ${xpOutput}`);
  return {
    ready: words[0] === READY_MAGIC,
    tscPer50ms: words[1],
    count: words[2] + words[3] * 2 ** 32,
    ticksPerPage: words[4],
  };
}

const ASM_URL = new URL("./guest.asm", import.meta.url);
let assembled: Promise<Uint8Array> | undefined;

/** Where assembled images are cached across processes (keyed by the source's hash). */
export function guestCacheDir(): string {
  const base = Deno.env.get("XDG_CACHE_HOME") ?? "/tmp";
  return `${base}/ferry-bench-qemu`;
}

/**
 * Assembles `guest.asm` with nasm (once per process; the binary is cached on disk by
 * the source's SHA-256) and checks the result's Multiboot header and parameter block.
 */
export function assembleGuest(): Promise<Uint8Array> {
  assembled ??= assemble().catch((e) => {
    assembled = undefined;
    throw e;
  });
  return assembled;
}

async function assemble(): Promise<Uint8Array> {
  const source = await Deno.readFile(ASM_URL);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", source));
  const hash = Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
  const dir = guestCacheDir();
  const cached = `${dir}/guest-${hash}.bin`;
  let image: Uint8Array | undefined;
  try {
    image = await Deno.readFile(cached);
  } catch {
    // not cached yet
  }
  if (image === undefined || image.byteLength !== GUEST_IMAGE_SIZE) {
    await Deno.mkdir(dir, { recursive: true });
    const tmp = `${cached}.${Deno.pid}.tmp`;
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command("nasm", {
        args: ["-f", "bin", "-o", tmp, ASM_URL.pathname],
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (e) {
      throw new GuestImageError(`cannot run nasm: ${(e as Error).message}`);
    }
    if (!out.success) {
      await Deno.remove(tmp).catch(() => {});
      throw new GuestImageError(`nasm failed: ${new TextDecoder().decode(out.stderr).trim()}`);
    }
    await Deno.rename(tmp, cached);
    image = await Deno.readFile(cached);
  }
  checkImage(image);
  return image;
}

/** Throws unless `image` is a loadable guest: header, addresses, parameter block. */
export function checkImage(image: Uint8Array): void {
  if (image.byteLength !== GUEST_IMAGE_SIZE) {
    throw new GuestImageError(`guest image is ${image.byteLength} bytes, want ${GUEST_IMAGE_SIZE}`);
  }
  const h = findMultibootHeader(image);
  if (h === undefined) throw new GuestImageError("guest image has no Multiboot header");
  if (!h.checksumValid) throw new GuestImageError("guest Multiboot checksum is wrong");
  if ((h.flags & MULTIBOOT_AOUT_KLUDGE) === 0) {
    throw new GuestImageError("guest Multiboot header lacks the address fields (flag bit 16)");
  }
  if (h.loadAddr !== GUEST_LOAD_ADDR || h.headerAddr !== GUEST_LOAD_ADDR + h.offset) {
    throw new GuestImageError(`guest load address ${h.loadAddr} != ${GUEST_LOAD_ADDR}`);
  }
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (dv.getUint32(ParamOffset.magic, true) !== PARAM_MAGIC) {
    throw new GuestImageError(`guest image has no parameter block at ${ParamOffset.magic}`);
  }
}
