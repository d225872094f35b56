import assert from "node:assert/strict";
import {
  GUEST_APPEND,
  GUEST_FILES,
  guestImagePresent,
  type GuestManifest,
  initramfsRecipe,
  MANIFEST_NAME,
  readGuestImage,
  readManifest,
  sha256Hex,
  X86ImageError,
} from "../../../vm/x86/guest_image.ts";
import { writeCpio } from "../../../vm/x86/cpio.ts";
import { initramfsEntries } from "../../../vm/x86/initramfs.ts";
import { kernelRelease, parseCandidate, parseKernelPackage } from "../../../tools/guest_image.ts";

const FILES: Record<string, Uint8Array> = {
  "bios.bin": new Uint8Array([1, 2, 3]),
  "vmlinuz": new Uint8Array([4, 5]),
  "initrd.gz": new Uint8Array([6]),
};

/** Writes a fake image into a fresh directory; returns the directory's URL. */
async function fakeImage(): Promise<URL> {
  const dir = new URL(`file://${await Deno.makeTempDir()}/`);
  const files = {} as GuestManifest["files"];
  for (const name of GUEST_FILES) {
    await Deno.writeFile(new URL(name, dir), FILES[name]);
    files[name] = { bytes: FILES[name].length, sha256: sha256Hex(FILES[name]) };
  }
  const manifest: GuestManifest = {
    format: 1,
    recipe: initramfsRecipe(),
    append: GUEST_APPEND,
    packages: { seabios: "1.16.2-1" },
    files,
  };
  await Deno.writeTextFile(new URL(MANIFEST_NAME, dir), JSON.stringify(manifest));
  return dir;
}

async function withFakeImage(fn: (dir: URL) => Promise<void>): Promise<void> {
  const dir = await fakeImage();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("readGuestImage returns the files when each matches the manifest", async () => {
  await withFakeImage(async (dir) => {
    assert.ok(guestImagePresent(dir));
    const image = await readGuestImage(dir);
    assert.deepEqual(image.bios, FILES["bios.bin"]);
    assert.deepEqual(image.kernel, FILES["vmlinuz"]);
    assert.deepEqual(image.initrd, FILES["initrd.gz"]);
    assert.equal(image.manifest.append, GUEST_APPEND);
  });
});

Deno.test("readGuestImage names a missing manifest, a missing file and a changed file", async () => {
  await withFakeImage(async (dir) => {
    await Deno.writeFile(new URL("vmlinuz", dir), new Uint8Array([4, 6]));
    await assert.rejects(readGuestImage(dir), X86ImageError, "vmlinuz differs");
    await Deno.remove(new URL("initrd.gz", dir));
    await assert.rejects(readGuestImage(dir), X86ImageError, "initrd.gz is missing");
    await Deno.remove(new URL(MANIFEST_NAME, dir));
    assert.equal(guestImagePresent(dir), false);
    assert.equal(await readManifest(dir), null);
    await assert.rejects(readGuestImage(dir), X86ImageError, "guest:image");
  });
});

Deno.test("readManifest rejects text that is not JSON or not a manifest", async () => {
  await withFakeImage(async (dir) => {
    await Deno.writeTextFile(new URL(MANIFEST_NAME, dir), "{");
    await assert.rejects(readManifest(dir), X86ImageError, "not JSON");
    await Deno.writeTextFile(new URL(MANIFEST_NAME, dir), '{"format":2}');
    await assert.rejects(readManifest(dir), X86ImageError, "malformed");
  });
});

Deno.test("initramfsRecipe is a stable SHA-256 of the layout and /init around an empty busybox", () => {
  assert.match(initramfsRecipe(), /^[0-9a-f]{64}$/);
  assert.equal(initramfsRecipe(), initramfsRecipe());
  assert.equal(initramfsRecipe(), sha256Hex(writeCpio(initramfsEntries(new Uint8Array()))));
});

Deno.test("guest:image reads the kernel package and versions from apt-cache's output", () => {
  const depends = "linux-image-686:i386\n  Depends: linux-image-6.1.0-57-686:i386\n";
  assert.equal(parseKernelPackage(depends), "linux-image-6.1.0-57-686");
  assert.equal(parseKernelPackage("linux-image-686:i386\n  Depends: initramfs-tools\n"), null);
  assert.equal(kernelRelease("linux-image-6.1.0-57-686"), "6.1.0-57-686");
  const policy = [
    "busybox-static:i386:",
    "  Installed: (none)",
    "  Candidate: 1:1.35.0-4+deb12u1+b1",
    "  Version table:",
    "     1:1.35.0-4+deb12u1+b1 500",
  ].join("\n");
  assert.equal(parseCandidate(policy), "1:1.35.0-4+deb12u1+b1");
  assert.equal(parseCandidate("x:\n  Installed: (none)\n  Candidate: (none)\n"), null);
  assert.equal(parseCandidate(""), null);
});
