/**
 * The x86 demo guest's initramfs: a static busybox and an `/init` script that mounts
 * the usual file systems, prints the tick chain ({@link ./ticks.ts}) on ttyS0 and
 * keeps an interactive shell there. Built by ferry's own cpio writer and gzipped.
 */
import { type CpioEntry, writeCpio } from "./cpio.ts";
import { TICK_SEED } from "./ticks.ts";

/** The prompt of the guest's shell. */
export const GUEST_PROMPT = "guest# ";

/**
 * The guest's `/init`, run by busybox sh as PID 1. The ticker is a background job in
 * init's session, so a Ctrl-C on the shell does not reach it; the shell is restarted
 * if it exits, since PID 1 must not.
 */
export const INIT_SCRIPT = `#!/bin/sh
# ferry's x86 demo guest (vm/x86/initramfs.ts).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root

# The tick chain: "tick N H", H = first 16 hex digits of md5("PREV N\\n").
ticker() {
  n=0
  h=${TICK_SEED}
  while :; do
    n=$((n + 1))
    h=$(echo "$h $n" | md5sum)
    h=\${h:0:16}
    echo "tick $n $h"
    sleep 0.1
  done
}
ticker </dev/null >/dev/ttyS0 2>&1 &

export PS1='${GUEST_PROMPT}'
while :; do
  setsid cttyhack sh
done
`;

/** The initramfs's entries: directories, busybox, `/bin/sh`, `/dev/console` and `/init`. */
export function initramfsEntries(busybox: Uint8Array): CpioEntry[] {
  const dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root"];
  return [
    ...dirs.map((path): CpioEntry => ({
      kind: "dir",
      path,
      mode: path === "tmp" ? 0o1777 : 0o755,
    })),
    { kind: "file", path: "bin/busybox", data: busybox, mode: 0o755 },
    { kind: "symlink", path: "bin/sh", target: "busybox" },
    // The kernel opens /dev/console for init before anything is mounted.
    { kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    { kind: "file", path: "init", data: new TextEncoder().encode(INIT_SCRIPT), mode: 0o755 },
  ];
}

/** The gzipped cpio archive the kernel unpacks as its root file system. */
export async function buildInitramfs(busybox: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  return await gzip(writeCpio(initramfsEntries(busybox)));
}

/** Gzips `bytes` (the kernel accepts a gzip-compressed initramfs). */
export async function gzip(bytes: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
