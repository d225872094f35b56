/**
 * The files an x86 guest boots from: those named on the command line, and for the
 * rest the image `deno task guest:image` built (checked against its manifest).
 * @module
 */
import { GUEST_APPEND, readGuestImage, X86ImageError } from "./guest_image.ts";

/** The files and command line of `--kernel`, `--initrd`, `--bios`, `--append`. */
export interface X86BootFlags {
  readonly kernel?: string;
  readonly initrd?: string;
  readonly bios?: string;
  readonly append?: string;
}

/** What X86Guest.create boots. */
export interface X86BootImages {
  readonly bios: Uint8Array;
  readonly kernel: Uint8Array;
  readonly initrd: Uint8Array;
  readonly append: string;
}

async function readFlagFile(flag: string, path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    throw new X86ImageError(`cannot read --${flag} ${path}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

/**
 * Reads the guest's files: each flag's file, or the built image's. Throws
 * {@link X86ImageError} naming what is missing or unreadable.
 */
export async function readBootImages(flags: X86BootFlags): Promise<X86BootImages> {
  const needDefault = !flags.kernel || !flags.initrd || !flags.bios;
  const image = needDefault ? await readGuestImage() : undefined;
  return {
    bios: flags.bios ? await readFlagFile("bios", flags.bios) : image!.bios,
    kernel: flags.kernel ? await readFlagFile("kernel", flags.kernel) : image!.kernel,
    initrd: flags.initrd ? await readFlagFile("initrd", flags.initrd) : image!.initrd,
    append: flags.append ?? GUEST_APPEND,
  };
}
