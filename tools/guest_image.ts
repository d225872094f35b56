/**
 * `deno task guest:image [-- --out DIR] [-- --refresh]`: builds ferry's default x86
 * guest ({@link ../vm/x86/guest_image.ts}) from Debian packages: SeaBIOS's
 * `bios.bin`, the i386 `686` kernel that `linux-image-686:i386` points to, and an
 * initramfs around `busybox-static:i386` written by ferry's own cpio writer.
 *
 * A run whose directory already holds an image matching its manifest and the
 * current initramfs recipe does nothing (`--refresh` rebuilds with the newest
 * package versions apt offers). Adding the i386 architecture and `apt-get update`
 * need root; downloading and unpacking do not.
 */
import {
  DEFAULT_GUEST_DIR,
  GUEST_APPEND,
  GUEST_FILES,
  type GuestFile,
  type GuestManifest,
  initramfsRecipe,
  MANIFEST_NAME,
  readGuestImage,
  sha256Hex,
  X86ImageError,
} from "../vm/x86/guest_image.ts";
import { buildInitramfs } from "../vm/x86/initramfs.ts";

/** The meta package whose dependency names the kernel package. */
export const KERNEL_META = "linux-image-686:i386";
/** The BIOS package (architecture all). */
export const BIOS_PACKAGE = "seabios";
/** The userland package. */
export const BUSYBOX_PACKAGE = "busybox-static:i386";

/** Thrown when a step of the build fails; the message says which and why. */
export class GuestBuildError extends Error {
  override readonly name = "GuestBuildError";
}

/** The kernel package `apt-cache depends linux-image-686:i386` names, e.g. `linux-image-6.1.0-57-686`. */
export function parseKernelPackage(dependsOutput: string): string | null {
  const m = /^\s*Depends:\s*(linux-image-[0-9][^\s:]*-686)(?::i386)?\s*$/m.exec(dependsOutput);
  return m ? m[1] : null;
}

/** The candidate version in `apt-cache policy NAME` output; null when apt has none. */
export function parseCandidate(policyOutput: string): string | null {
  const m = /^\s*Candidate:\s*(\S+)\s*$/m.exec(policyOutput);
  return m && m[1] !== "(none)" ? m[1] : null;
}

/** The kernel release a kernel package installs, e.g. `6.1.0-57-686` for `linux-image-6.1.0-57-686`. */
export function kernelRelease(kernelPackage: string): string {
  return kernelPackage.replace(/^linux-image-/, "");
}

interface Output {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

async function exec(cmd: string, args: string[], cwd?: string): Promise<Output> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd, stdin: "null", env: { LC_ALL: "C" } }).output();
  } catch (e) {
    throw new GuestBuildError(`cannot run ${cmd}: ${e instanceof Error ? e.message : e}`);
  }
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

async function mustExec(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await exec(cmd, args, cwd);
  if (out.code !== 0) {
    const why = out.stderr.trim().split("\n").slice(-3).join(" / ");
    throw new GuestBuildError(`${cmd} ${args.join(" ")} failed (exit ${out.code}): ${why}`);
  }
  return out.stdout;
}

function log(line: string): void {
  console.log(`guest:image: ${line}`);
}

function requireRoot(what: string): void {
  if (Deno.uid() !== 0) throw new GuestBuildError(`${what} needs root; run as root once`);
}

async function aptUpdate(): Promise<void> {
  requireRoot("apt-get update");
  log("apt-get update");
  await mustExec("apt-get", ["update", "-qq"]);
}

/** Adds the i386 architecture to dpkg when missing; returns whether it did (apt then needs an update). */
async function ensureI386(): Promise<boolean> {
  const foreign = await mustExec("dpkg", ["--print-foreign-architectures"]);
  if (foreign.split(/\s+/).includes("i386")) return false;
  requireRoot("dpkg --add-architecture i386");
  log("dpkg --add-architecture i386");
  await mustExec("dpkg", ["--add-architecture", "i386"]);
  return true;
}

/** The exact packages and versions to download, per apt's current lists; null if apt knows none. */
async function resolvePackages(): Promise<Record<string, string> | null> {
  const kernel = parseKernelPackage(await mustExec("apt-cache", ["depends", KERNEL_META]));
  if (kernel === null) return null;
  const names = [BIOS_PACKAGE, `${kernel}:i386`, BUSYBOX_PACKAGE];
  const packages: Record<string, string> = {};
  for (const name of names) {
    const version = parseCandidate(await mustExec("apt-cache", ["policy", name]));
    if (version === null) return null;
    packages[name] = version;
  }
  return packages;
}

async function download(packages: Record<string, string>, dir: string): Promise<void> {
  const specs = Object.entries(packages).map(([name, version]) => `${name}=${version}`);
  log(`apt-get download ${specs.join(" ")}`);
  // apt's download sandbox user cannot write into a root-owned private directory.
  await mustExec("apt-get", ["-o", "APT::Sandbox::User=root", "download", ...specs], dir);
}

async function writeAtomically(path: URL, bytes: Uint8Array): Promise<void> {
  const tmp = new URL(`${path.href}.tmp`);
  await Deno.writeFile(tmp, bytes);
  await Deno.rename(tmp, path);
}

/** Builds the image into `dir` (a directory URL ending in `/`) and returns its manifest. */
export async function buildGuestImage(dir: URL): Promise<GuestManifest> {
  await Deno.mkdir(dir, { recursive: true });
  let updated = false;
  if (await ensureI386()) {
    await aptUpdate();
    updated = true;
  }
  let packages = await resolvePackages();
  if (packages === null && !updated) {
    await aptUpdate();
    updated = true;
    packages = await resolvePackages();
  }
  if (packages === null) {
    throw new GuestBuildError(
      `apt offers no ${KERNEL_META}, ${BIOS_PACKAGE} or ${BUSYBOX_PACKAGE}`,
    );
  }
  const work = new URL(".build/", dir);
  await Deno.remove(work, { recursive: true }).catch(() => {});
  await Deno.mkdir(new URL("root/", work), { recursive: true });
  try {
    try {
      await download(packages, work.pathname);
    } catch (e) {
      if (updated || !(e instanceof GuestBuildError)) throw e;
      log(`download failed (${e.message}); refreshing apt's lists`);
      await aptUpdate();
      const fresh = await resolvePackages();
      if (fresh === null) throw e;
      packages = fresh;
      await download(packages, work.pathname);
    }
    for await (const entry of Deno.readDir(work)) {
      if (!entry.name.endsWith(".deb")) continue;
      await mustExec("dpkg-deb", ["-x", entry.name, "root"], work.pathname);
    }
    const kernelPackage = Object.keys(packages).find((n) => n.startsWith("linux-image-"))!;
    const root = new URL("root/", work);
    const read = (path: string) => Deno.readFile(new URL(path, root));
    const busybox = await read("bin/busybox");
    const outputs: Record<GuestFile, Uint8Array> = {
      "bios.bin": await read("usr/share/seabios/bios.bin"),
      "vmlinuz": await read(`boot/vmlinuz-${kernelRelease(kernelPackage.replace(/:i386$/, ""))}`),
      "initrd.gz": await buildInitramfs(busybox),
    };
    const files = {} as GuestManifest["files"];
    for (const name of GUEST_FILES) {
      await writeAtomically(new URL(name, dir), outputs[name]);
      files[name] = { bytes: outputs[name].length, sha256: sha256Hex(outputs[name]) };
    }
    const manifest: GuestManifest = {
      format: 1,
      recipe: initramfsRecipe(),
      append: GUEST_APPEND,
      packages,
      files,
    };
    await writeAtomically(
      new URL(MANIFEST_NAME, dir),
      new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n"),
    );
    return manifest;
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** The image in `dir` when it is complete and built by the current recipe, else null. */
export async function cachedGuestImage(dir: URL): Promise<GuestManifest | null> {
  try {
    const { manifest } = await readGuestImage(dir);
    return manifest.recipe === initramfsRecipe() && manifest.append === GUEST_APPEND
      ? manifest
      : null;
  } catch (e) {
    if (e instanceof X86ImageError) return null;
    throw e;
  }
}

function describe(manifest: GuestManifest): string {
  const packages = Object.entries(manifest.packages).map(([n, v]) => `${n} ${v}`).join(", ");
  const files = GUEST_FILES.map((n) => `${n} ${manifest.files[n].bytes} B`).join(", ");
  return `${packages}; ${files}`;
}

async function main(args: string[]): Promise<number> {
  let dir = DEFAULT_GUEST_DIR;
  let refresh = false;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--refresh") refresh = true;
    else if (args[i] === "--out" && i + 1 < args.length) {
      const path = args[++i];
      dir = new URL(path.endsWith("/") ? path : `${path}/`, `file://${Deno.cwd()}/`);
    } else {
      console.error("usage: deno task guest:image [-- --out DIR] [-- --refresh]");
      return 2;
    }
  }
  if (!refresh) {
    const cached = await cachedGuestImage(dir);
    if (cached !== null) {
      log(`cached in ${dir.pathname}: ${describe(cached)}`);
      return 0;
    }
  }
  try {
    const manifest = await buildGuestImage(dir);
    log(`built in ${dir.pathname}: ${describe(manifest)}`);
    return 0;
  } catch (e) {
    if (!(e instanceof GuestBuildError)) throw e;
    console.error(`guest:image: ${e.message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
