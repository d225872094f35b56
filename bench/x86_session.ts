/**
 * Driving a booted x86 guest (`--guest x86`) from a bench: start a ferry, type
 * into its console and wait for what it answers, read its RAM and save it as an
 * image with a manifest. bench/x86.ts and bench/ram_image.ts share these.
 * @module
 */
import { createHash } from "node:crypto";
import type { FollowedConsole } from "../testing/console_follower.ts";
import { type FerryClient, FerryProcess } from "../testing/ferry_process.ts";
import { PAGE_SIZE } from "../vm/ram.ts";
import { parseTicks } from "../vm/x86/ticks.ts";
import { countLines } from "./x86_helpers.ts";

const MiB = 2 ** 20;
/** Hang guard for a few console lines (ticks, the shell's answer, a pass of the loop). */
export const LINES_GUARD_MS = 300_000;
/** How long a start may take (a destination faults in twice its RAM first). */
export const START_TIMEOUT_MS = 300_000;
/** GET /vm/ram's largest read. */
const RAM_READ_CHUNK = 16 * MiB;

export /** Rejects with `what` if `p` has not settled within `ms` (a hang guard, not a speed limit). */
async function guard<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no ${what} within ${ms / 1000} s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Starts an x86 ferry of `ram` with `extra` flags. */
export function startX86(ram: string, extra: string[] = []): Promise<FerryProcess> {
  return FerryProcess.start(["--guest", "x86", "--ram", ram, ...extra], {}, {
    startTimeoutMs: START_TIMEOUT_MS,
  });
}

export async function type(ferry: FerryClient, input: string): Promise<void> {
  const res = await ferry.api("POST", "/vm/console", { input });
  if (res.status !== 200) {
    throw new Error(`POST /vm/console: ${res.status} ${JSON.stringify(res.body)}`);
  }
}

/**
 * Has the guest's shell print a fresh marker and resolves with the console
 * position right after it: what follows is newer than this call, whatever
 * history the console replayed.
 */
export async function mark(ferry: FerryClient, con: FollowedConsole): Promise<number> {
  const id = crypto.randomUUID().slice(0, 8);
  await type(ferry, `echo "m""${id}"\n`);
  const line = `m${id}\r\n`;
  return await guard(
    con.log.waitFor((text) => {
      const at = text.indexOf(line);
      return at >= 0 ? at + line.length : false;
    }),
    LINES_GUARD_MS,
    "marker from the guest's shell",
  );
}

/** Resolves once `count` tick lines follow console position `from`. */
export function ticksAfter(con: FollowedConsole, from: number, count: number): Promise<unknown> {
  return guard(
    con.log.waitFor((text) => parseTicks(text.slice(from)).length >= count),
    LINES_GUARD_MS,
    `${count} ticks`,
  );
}

/** Resolves once `count` lines `word` follow console position `from`. */
export function linesAfter(
  con: FollowedConsole,
  from: number,
  word: string,
  count: number,
  ms = LINES_GUARD_MS,
): Promise<unknown> {
  return guard(
    con.log.waitFor((text) => countLines(text.slice(from), word) >= count),
    ms,
    `${count} × "${word}" from the guest`,
  );
}

/** Reads all of a stopped guest's RAM and checks it against its digest. */
export async function readRam(ferry: FerryClient, ramBytes: number): Promise<Uint8Array> {
  const out = new Uint8Array(ramBytes);
  for (let at = 0; at < ramBytes; at += RAM_READ_CHUNK) {
    const length = Math.min(RAM_READ_CHUNK, ramBytes - at);
    const res = await ferry.fetch(`/vm/ram?offset=${at}&length=${length}`);
    if (res.status !== 200) throw new Error(`GET /vm/ram: ${res.status} ${await res.text()}`);
    const chunk = new Uint8Array(await res.arrayBuffer());
    if (chunk.length !== length) throw new Error(`GET /vm/ram gave ${chunk.length} bytes`);
    out.set(chunk, at);
  }
  const digest = (await ferry.api("GET", "/vm/ram/digest")).body;
  const sha = createHash("sha256").update(out).digest("hex");
  if (digest.blocks?.[0]?.sha256 !== sha) {
    throw new Error("the RAM read over GET /vm/ram differs from the guest's digest");
  }
  return out;
}

/** The commit the bench runs from, for the images' manifests. */
export async function gitCommit(): Promise<string> {
  try {
    const out = await new Deno.Command("git", {
      args: ["-C", new URL("..", import.meta.url).pathname, "rev-parse", "HEAD"],
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).trim() || "unknown";
  } catch {
    return "unknown";
  }
}

/**
 * Writes a RAM image to `path` with a manifest beside it (`path.json`: size,
 * sha256, what the guest was doing, the command, the ferry commit and the guest
 * image's manifest); returns `path`.
 */
export async function saveRamImage(
  path: string,
  bytes: Uint8Array,
  about: string,
  command: string,
  extra: Record<string, unknown> = {},
): Promise<string> {
  await Deno.mkdir(path.replace(/\/[^/]*$/, ""), { recursive: true });
  await Deno.writeFile(path, bytes);
  let guestImage: unknown = null;
  try {
    guestImage = JSON.parse(
      await Deno.readTextFile(new URL("../.cache/guest/manifest.json", import.meta.url)),
    );
  } catch {
    // the manifest is informative only
  }
  await Deno.writeTextFile(
    `${path}.json`,
    JSON.stringify(
      {
        file: path.replace(/^.*\//, ""),
        bytes: bytes.length,
        sha256: createHash("sha256").update(bytes).digest("hex"),
        page_size: PAGE_SIZE,
        state: about,
        command,
        created: new Date().toISOString(),
        ferry_commit: await gitCommit(),
        guest_image: guestImage,
        ...extra,
      },
      null,
      1,
    ) + "\n",
  );
  return path;
}
