import assert from "node:assert/strict";
import {
  CPIO_MAGIC,
  type CpioEntry,
  CpioError,
  readCpio,
  writeCpio,
} from "../../../vm/x86/cpio.ts";

const text = (s: string) => new TextEncoder().encode(s);

const SAMPLE: CpioEntry[] = [
  { kind: "dir", path: "bin", mode: 0o755 },
  { kind: "file", path: "bin/tool", data: text("#!/bin/sh\necho hi\n"), mode: 0o755 },
  { kind: "symlink", path: "bin/sh", target: "tool" },
  { kind: "dir", path: "dev", mode: 0o755 },
  { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
  { kind: "file", path: "empty", data: new Uint8Array(), mode: 0o644 },
  { kind: "file", path: "odd-sized-name.txt", data: text("abc"), mode: 0o600 },
];

function onPath(bin: string): boolean {
  return (Deno.env.get("PATH") ?? "").split(":").some((dir) => {
    try {
      return Deno.statSync(`${dir}/${bin}`).isFile;
    } catch {
      return false;
    }
  });
}

Deno.test("writeCpio: newc entries, 4-byte aligned, ending in the trailer, read back the same", () => {
  const bytes = writeCpio(SAMPLE);
  assert.equal(bytes.length % 4, 0);
  assert.equal(new TextDecoder().decode(bytes.subarray(0, 6)), CPIO_MAGIC);
  assert.ok(new TextDecoder().decode(bytes).includes("TRAILER!!!\0"));
  assert.deepEqual(readCpio(bytes), SAMPLE);
});

Deno.test("writeCpio: the same entries make the same bytes (mtime, uid and gid are 0)", () => {
  assert.deepEqual(writeCpio(SAMPLE), writeCpio(SAMPLE));
  const header = new TextDecoder().decode(writeCpio([SAMPLE[1]]).subarray(0, 110));
  const field = (i: number) => header.slice(6 + 8 * i, 14 + 8 * i);
  assert.equal(field(1), (0o100755).toString(16).padStart(8, "0")); // mode
  assert.equal(field(2), "00000000"); // uid
  assert.equal(field(5), "00000000"); // mtime
  assert.equal(parseInt(field(6), 16), 18); // filesize
  assert.equal(parseInt(field(11), 16), "bin/tool".length + 1); // namesize with NUL
});

Deno.test("writeCpio rejects absolute, empty, duplicate and trailer paths, and bad modes", () => {
  const file = (path: string): CpioEntry => ({ kind: "file", path, data: new Uint8Array() });
  for (const path of ["/init", "", "a\0b", "TRAILER!!!"]) {
    assert.throws(() => writeCpio([file(path)]), CpioError, JSON.stringify(path));
  }
  assert.throws(() => writeCpio([file("a"), file("a")]), /appears twice/);
  assert.throws(() => writeCpio([{ kind: "dir", path: "d", mode: 0o10000 }]), CpioError);
  assert.throws(() => writeCpio([{ kind: "symlink", path: "l", target: "" }]), CpioError);
});

Deno.test("readCpio rejects a bad magic, a truncated archive and a missing trailer", () => {
  const bytes = writeCpio(SAMPLE);
  const bad = bytes.slice();
  bad[0] = "1".charCodeAt(0);
  assert.throws(() => readCpio(bad), /bad magic/);
  assert.throws(() => readCpio(bytes.subarray(0, 200)), /truncated/);
  const noTrailer = writeCpio([SAMPLE[0]]);
  assert.throws(() => readCpio(noTrailer.subarray(0, 112)), /truncated/);
});

Deno.test({
  name: "writeCpio: GNU cpio lists the archive back (skipped without cpio on PATH)",
  ignore: !onPath("cpio"),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const archive = `${dir}/a.cpio`;
      await Deno.writeFile(archive, writeCpio(SAMPLE));
      const out = await new Deno.Command("cpio", {
        args: ["-it", "-F", archive],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const listed = new TextDecoder().decode(out.stdout).trim().split("\n");
      assert.deepEqual(listed, SAMPLE.map((e) => e.path));
      // And it unpacks file contents and the symlink as written.
      const extract = await new Deno.Command("cpio", {
        args: ["-id", "--quiet", "-F", archive, "bin/tool", "bin/sh"],
        cwd: dir,
        stderr: "piped",
      }).output();
      assert.equal(extract.code, 0, new TextDecoder().decode(extract.stderr));
      assert.equal(await Deno.readTextFile(`${dir}/bin/tool`), "#!/bin/sh\necho hi\n");
      assert.equal(await Deno.readLink(`${dir}/bin/sh`), "tool");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
