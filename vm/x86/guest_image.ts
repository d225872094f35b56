/**
 * The default x86 guest on disk: `bios.bin`, `vmlinuz` and `initrd.gz` in a cache
 * directory (`.cache/guest/`, outside git), built by `deno task guest:image` from
 * Debian packages, and a `manifest.json` naming the package versions and each
 * file's size and SHA-256, so a reader can tell a complete, unchanged image.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { writeCpio } from "./cpio.ts";
import { initramfsEntries } from "./initramfs.ts";

/** Where `deno task guest:image` puts the guest by default: `.cache/guest/` in the repository. */
export const DEFAULT_GUEST_DIR = new URL("../../.cache/guest/", import.meta.url);

/** The image's files, by their names in the directory. */
export const GUEST_FILES = ["bios.bin", "vmlinuz", "initrd.gz"] as const;

/** One of {@link GUEST_FILES}. */
export type GuestFile = typeof GUEST_FILES[number];

/** The name of the manifest in the directory. */
export const MANIFEST_NAME = "manifest.json";

/**
 * The guest's kernel command line: serial console, few boot messages, no TSC
 * calibration doubts, no mitigations or crypto self-tests (slow when emulated).
 */
export const GUEST_APPEND =
  "console=ttyS0 quiet tsc=reliable mitigations=off cryptomgr.notests rdinit=/init";

/** The guest's RAM. */
export const GUEST_MEMORY_BYTES = 128 * 1024 * 1024;

/** Thrown when the image is missing, incomplete or not what its manifest says. */
export class X86ImageError extends Error {
  override readonly name = "X86ImageError";
}

const FileInfo = z.object({
  bytes: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});

/** `manifest.json`'s shape. */
export const GuestManifestSchema = z.object({
  /** Layout version of this manifest. */
  format: z.literal(1),
  /** {@link initramfsRecipe} at build time: a changed `/init` or layout means rebuild. */
  recipe: z.string().regex(/^[0-9a-f]{64}$/),
  /** The kernel command line the image was built for. */
  append: z.string(),
  /** Debian package name (with architecture) to the exact version used. */
  packages: z.record(z.string(), z.string()),
  /** Each output file's size and SHA-256. */
  files: z.object({ "bios.bin": FileInfo, "vmlinuz": FileInfo, "initrd.gz": FileInfo }),
});

/** A parsed `manifest.json`. */
export type GuestManifest = z.infer<typeof GuestManifestSchema>;

/** The image's bytes, checked against its manifest. */
export interface GuestImage {
  readonly manifest: GuestManifest;
  readonly bios: Uint8Array;
  readonly kernel: Uint8Array;
  readonly initrd: Uint8Array;
}

/** SHA-256 of `bytes`, lowercase hex. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * A digest of how the initramfs is made: its layout and `/init` around an empty
 * busybox, as ferry's cpio writer writes them. It changes when any of them does.
 */
export function initramfsRecipe(): string {
  return sha256Hex(writeCpio(initramfsEntries(new Uint8Array())));
}

function fileUrl(dir: URL, name: string): URL {
  return new URL(name, dir.href.endsWith("/") ? dir : new URL(`${dir.href}/`));
}

/** Whether `dir` holds a manifest: the cheap test that decides whether guest tests run. */
export function guestImagePresent(dir: URL = DEFAULT_GUEST_DIR): boolean {
  try {
    return Deno.statSync(fileUrl(dir, MANIFEST_NAME)).isFile;
  } catch {
    return false;
  }
}

/** Reads and validates `dir`'s manifest; null when there is none, throws when it is bad. */
export async function readManifest(dir: URL = DEFAULT_GUEST_DIR): Promise<GuestManifest | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(fileUrl(dir, MANIFEST_NAME));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new X86ImageError(`${MANIFEST_NAME} is not JSON`);
  }
  const parsed = GuestManifestSchema.safeParse(json);
  if (!parsed.success) {
    throw new X86ImageError(`${MANIFEST_NAME} is malformed: ${parsed.error.issues[0]?.message}`);
  }
  return parsed.data;
}

/**
 * Reads the image in `dir` and checks every file against the manifest. Throws
 * {@link X86ImageError} naming the first problem (no manifest, a missing file,
 * a size or digest that differs).
 */
export async function readGuestImage(dir: URL = DEFAULT_GUEST_DIR): Promise<GuestImage> {
  const manifest = await readManifest(dir);
  if (manifest === null) {
    throw new X86ImageError(`no guest image in ${dir.pathname}: run deno task guest:image`);
  }
  const bytes = {} as Record<GuestFile, Uint8Array>;
  for (const name of GUEST_FILES) {
    try {
      bytes[name] = await Deno.readFile(fileUrl(dir, name));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new X86ImageError(`${name} is missing`);
      throw e;
    }
    const want = manifest.files[name];
    if (bytes[name].length !== want.bytes || sha256Hex(bytes[name]) !== want.sha256) {
      throw new X86ImageError(`${name} differs from ${MANIFEST_NAME}`);
    }
  }
  return {
    manifest,
    bios: bytes["bios.bin"],
    kernel: bytes["vmlinuz"],
    initrd: bytes["initrd.gz"],
  };
}
