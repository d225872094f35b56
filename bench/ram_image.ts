/**
 * `deno task bench:image`: a real guest's RAM as an image file, for
 * `--fill image:PATH` (the synthetic guest) and QEMU's `memory-backend-file`
 * (bench/migrate.ts `--only image`).
 *
 *   deno task bench:image                        # .cache/x86-ram/real-1g.img
 *   deno task bench:image --ram 256M             # .cache/x86-ram/real-256m.img
 *   deno task bench:image --ram 512M --out /var/tmp/real.img
 *
 * It boots Debian's kernel with the busybox initramfs in ferry's x86 guest
 * (`--guest x86`, needs `deno task guest:image`), runs a workload that fills the
 * page cache and runs programs (bench/x86_helpers.ts imageCommands), stops the
 * guest and reads its RAM (checked against its digest). The image is saved with a
 * manifest beside it (`.json`: sha256, the command, the commits, and the make-up
 * below), and its make-up is printed: zero and duplicate pages, and how the
 * non-zero pages compress with zstd and LZ4 alone, in the 128 KiB groups of a
 * compressed run, and in 1 MiB chunks.
 * @module
 */
import { parseArgs } from "node:util";
import { followConsole } from "../testing/console_follower.ts";
import { PAGE_SIZE, parseSize } from "../vm/ram.ts";
import { guestImagePresent } from "../vm/x86/guest_image.ts";
import { GUEST_PROMPT } from "../vm/x86/initramfs.ts";
import { parseTicks } from "../vm/x86/ticks.ts";
import { isCodec, lz4Codec, zstdCodec } from "./codecs.ts";
import { makeUp } from "./ram_makeup.ts";
import { IMAGE_STEPS, imageCommands } from "./x86_helpers.ts";
import { guard, linesAfter, mark, readRam, saveRamImage, startX86, type } from "./x86_session.ts";

const { values } = parseArgs({
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    ram: { type: "string", default: "1G" },
    out: { type: "string" },
  },
});
const ram = values.ram;
const ramBytes = parseSize(ram);
const out = values.out ??
  new URL(`../.cache/x86-ram/real-${ram.toLowerCase()}.img`, import.meta.url).pathname;
const command = ["deno", "task", "bench:image", ...Deno.args].join(" ");
/** A step of the workload may take minutes under v86 on a busy machine. */
const STEP_GUARD_MS = 1_200_000;
const MiB = 2 ** 20;

if (!guestImagePresent()) {
  console.error("bench:image needs the guest image: run deno task guest:image first");
  Deno.exit(2);
}

const t0 = performance.now();
const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(0)} s`;
console.error(`booting a ${ram} x86 guest`);
const src = await startX86(ram);
const con = await followConsole(src);
let bytes: Uint8Array;
try {
  await guard(con.log.waitFor((t) => parseTicks(t).length >= 1), STEP_GUARD_MS, "first tick");
  await guard(con.log.waitFor((t) => t.includes(GUEST_PROMPT)), STEP_GUARD_MS, "shell prompt");
  const commands = imageCommands(ramBytes / MiB);
  for (const [i, line] of commands.entries()) {
    const from = await mark(src, con);
    await type(src, line);
    await linesAfter(con, from, IMAGE_STEPS[i], 1, STEP_GUARD_MS);
    console.error(`  ${IMAGE_STEPS[i]} (${elapsed()})`);
  }
  const stop = await src.api("POST", "/vm/stop");
  if (stop.status !== 200) throw new Error(`POST /vm/stop: ${stop.status}`);
  bytes = await readRam(src, ramBytes);
} finally {
  await con.close();
  await src.kill("SIGKILL");
}

console.error(`analysing the image (${elapsed()})`);
const codecs = [zstdCodec(1), await lz4Codec()];
const GROUP = 32 * PAGE_SIZE;
const { census, compression } = makeUp(bytes, codecs.filter(isCodec), [PAGE_SIZE, GROUP, MiB]);
const pct = (n: number) => `${((n * 100) / census.pages).toFixed(1)} %`;
const summary = {
  pages: census.pages,
  zero: census.zero,
  non_zero: census.nonZero,
  duplicate: census.duplicate,
  distinct: census.distinct,
  compression: compression.map((c) => ({
    codec: c.codec,
    unit_bytes: c.unitBytes,
    ratio: Number(c.ratio.toFixed(3)),
    sent_bytes: c.sentBytes,
    incompressible_units: c.incompressible,
    mb_per_s: Math.round(c.rawBytes / 1e3 / c.compressMs),
  })),
};
await saveRamImage(
  out,
  bytes,
  "x86 guest after bench/x86_helpers.ts imageCommands (page cache of text, logs, copies, " +
    "a tar and its gzip, random bytes; resident awk processes), stopped",
  command,
  { make_up: summary },
);
console.log(`RAM image ${out} (${ram}, manifest ${out}.json), made in ${elapsed()}`);
console.log(
  `pages ${census.pages}: zero ${census.zero} (${pct(census.zero)}), non-zero ${census.nonZero}, ` +
    `of which duplicate ${census.duplicate} (${
      pct(census.duplicate)
    }), distinct ${census.distinct}`,
);
console.log("compression of the non-zero pages (ratio = raw / sent, a unit that grows sent raw):");
for (const c of summary.compression) {
  const unit = c.unit_bytes === PAGE_SIZE ? "4 KiB" : c.unit_bytes === GROUP ? "128 KiB" : "1 MiB";
  console.log(`  ${c.codec.padEnd(8)} ${unit.padEnd(8)} ratio ${c.ratio}  ${c.mb_per_s} MB/s`);
}
for (const c of codecs) if (!isCodec(c)) console.log(`  ${c.name}: unavailable (${c.unavailable})`);
