/**
 * Under `.ci/run` (FERRY_REQUIRE_ALL=1) every test that skips itself on a developer's
 * machine without some tool must run: this fails when one of those tools is missing,
 * so a CI that quietly skipped the x86 guest, QEMU, the analyzer or the browser tests
 * cannot pass.
 * @module
 */
import assert from "node:assert/strict";
import { guestImagePresent } from "../vm/x86/guest_image.ts";

function onPath(command: string): boolean {
  const probe = new Deno.Command("sh", { args: ["-c", `command -v ${command}`] }).outputSync();
  return probe.success && probe.stdout.length > 0;
}

function isFile(path: string | URL): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

Deno.test({
  name: "ci: every optional test prerequisite is installed",
  ignore: Deno.env.get("FERRY_REQUIRE_ALL") !== "1",
  fn() {
    const missing = [
      guestImagePresent() ? null : "the x86 guest image (deno task guest:image)",
      isFile(new URL("../.cache/qemu-7.2/analyze-migration.py", import.meta.url))
        ? null
        : "QEMU's analyze-migration.py (tools/fetch_analyzer.sh)",
      onPath("python3") ? null : "python3",
      onPath("qemu-system-x86_64") ? null : "qemu-system-x86_64",
      onPath("nasm") ? null : "nasm",
      onPath("cpio") ? null : "cpio",
      isFile("/usr/bin/chromium") ? null : "/usr/bin/chromium",
    ].filter((m) => m !== null);
    assert.deepEqual(missing, [], `missing under CI: ${missing.join(", ")}`);
  },
});
