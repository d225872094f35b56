import assert from "node:assert/strict";
import { readCpio } from "../../../vm/x86/cpio.ts";
import {
  buildInitramfs,
  GUEST_PROMPT,
  gzip,
  INIT_SCRIPT,
  initramfsEntries,
} from "../../../vm/x86/initramfs.ts";
import { TICK_SEED } from "../../../vm/x86/ticks.ts";

async function gunzip(bytes: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const FAKE_BUSYBOX = new TextEncoder().encode("\x7fELF not really busybox");

Deno.test("the initramfs holds busybox, /bin/sh, /dev/console and an executable /init", async () => {
  const entries = readCpio(await gunzip(await buildInitramfs(FAKE_BUSYBOX)));
  assert.deepEqual(entries, initramfsEntries(FAKE_BUSYBOX));
  const byPath = new Map(entries.map((e) => [e.path, e]));
  assert.deepEqual(byPath.get("bin/busybox"), {
    kind: "file",
    path: "bin/busybox",
    data: FAKE_BUSYBOX,
    mode: 0o755,
  });
  assert.deepEqual(byPath.get("bin/sh"), { kind: "symlink", path: "bin/sh", target: "busybox" });
  assert.deepEqual(byPath.get("dev/console"), {
    kind: "chardev",
    path: "dev/console",
    major: 5,
    minor: 1,
    mode: 0o600,
  });
  const init = byPath.get("init");
  assert.ok(init?.kind === "file" && init.mode === 0o755);
  assert.equal(new TextDecoder().decode(init.data), INIT_SCRIPT);
  // Every parent directory comes before what it holds.
  const seen = new Set<string>();
  for (const e of entries) {
    const parent = e.path.includes("/") ? e.path.slice(0, e.path.lastIndexOf("/")) : "";
    assert.ok(parent === "" || seen.has(parent), `${e.path} before ${parent}`);
    seen.add(e.path);
  }
});

Deno.test("/init mounts the file systems, prints the tick chain and keeps a shell on the console", () => {
  assert.ok(INIT_SCRIPT.startsWith("#!/bin/sh\n"));
  for (
    const line of [
      "mount -t proc proc /proc",
      "mount -t sysfs sysfs /sys",
      "mount -t devtmpfs devtmpfs /dev",
      "mount -t tmpfs tmpfs /dev/shm",
      "mount -t tmpfs tmpfs /tmp",
      "/bin/busybox --install -s",
      `h=${TICK_SEED}`,
      'h=$(echo "$h $n" | md5sum)',
      "h=${h:0:16}",
      'echo "tick $n $h"',
      "sleep 0.1",
      `export PS1='${GUEST_PROMPT}'`,
      "setsid cttyhack sh",
    ]
  ) {
    assert.ok(INIT_SCRIPT.includes(line), line);
  }
});

Deno.test("the initramfs is gzip, the same bytes every time", async () => {
  const a = await buildInitramfs(FAKE_BUSYBOX);
  const b = await buildInitramfs(FAKE_BUSYBOX);
  assert.deepEqual(a, b);
  assert.deepEqual([a[0], a[1]], [0x1f, 0x8b]);
  const data = new TextEncoder().encode("x".repeat(1000));
  assert.deepEqual(await gunzip(await gzip(data)), data);
});

Deno.test({
  name: "/init is valid sh syntax for the host's sh -n (skipped without /bin/sh)",
  ignore: (() => {
    try {
      return !Deno.statSync("/bin/sh").isFile;
    } catch {
      return true;
    }
  })(),
  async fn() {
    const out = await new Deno.Command("/bin/sh", {
      args: ["-n", "-c", INIT_SCRIPT],
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  },
});
