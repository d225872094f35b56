/**
 * The committed binary (engine/wasm/kernels_wasm.ts) must be exactly what
 * kernels.wat assembles to, so it cannot drift from its source: rerun
 * `deno task build:wasm` after editing the .wat.
 */
import assert from "node:assert/strict";
import { assembleKernels, kernelsModuleSource } from "../../../tools/build_wasm.ts";
import { KERNELS_WASM } from "../../../engine/wasm/kernels.ts";

Deno.test("kernels.wat assembles to the committed kernels_wasm.ts, byte for byte", async () => {
  const built = await assembleKernels();
  assert.deepEqual(
    built,
    KERNELS_WASM,
    "stale engine/wasm/kernels_wasm.ts: run deno task build:wasm",
  );
  const committed = await Deno.readTextFile(
    new URL("../../../engine/wasm/kernels_wasm.ts", import.meta.url),
  );
  assert.equal(committed, kernelsModuleSource(built));
});

Deno.test("the kernels binary validates and exports its kernels", () => {
  assert.ok(WebAssembly.validate(KERNELS_WASM));
  const exports = WebAssembly.Module.exports(new WebAssembly.Module(KERNELS_WASM));
  assert.deepEqual(
    exports.map((e) => e.name).sort(),
    [
      "copy_digest",
      "digest",
      "digest_copy",
      "err_pos",
      "first_nonzero_page",
      "is_zero",
      "xbzrle_decode",
      "xbzrle_encode",
    ],
  );
});
