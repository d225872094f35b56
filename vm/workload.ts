/**
 * Workloads the vCPU can run (`--workload`): what they are, how they are written as
 * text, and how they are checked against the guest's RAM.
 */
import { PAGE_SIZE, parseSize } from "./ram.ts";

/** The workload kinds, in the order of their numeric codes. */
export const WORKLOAD_KINDS = ["idle", "ab", "random"] as const;

/** One of {@link WORKLOAD_KINDS}. */
export type WorkloadKind = typeof WORKLOAD_KINDS[number];

/** Numeric code of each kind, as stored in the vCPU control block and device state. */
export const WORKLOAD_KIND_CODES = { idle: 0, ab: 1, random: 2 } as const;

/** Defaults applied when a parameter is absent from the text. */
export const WORKLOAD_DEFAULTS = {
  /** `ab` dirties pages as fast as the vCPU can. */
  abRate: 0,
  /** `random` dirties 50 MiB worth of pages per second. */
  randomRate: 50 * 1024 * 1024,
  /** `random` writes 8 bytes per op. */
  randomBytes: 8,
} as const;

/** The guest does nothing: RAM never changes. */
export interface IdleWorkload {
  readonly kind: "idle";
}

/**
 * QEMU's migration test guest: increments byte 0 of every page of a range in turn,
 * forever, so (starting from uniform RAM) those bytes hold at most two adjacent values.
 */
export interface AbWorkload {
  readonly kind: "ab";
  /** Bytes of pages dirtied per second (ops/s = rate / 4096); 0 = as fast as possible. */
  readonly rate: number;
  /** Bytes covered from the start of the first block (multiple of 4096); null = whole block. */
  readonly range: number | null;
}

/** A hot set: `pagesPercent` % of the pages receive `opsPercent` % of the ops. */
export interface HotSet {
  /** Size of the hot region, as a percentage (1-100) of the block's pages, from page 0. */
  readonly pagesPercent: number;
  /** Share (0-100 %) of ops that land in the hot region; the rest land anywhere. */
  readonly opsPercent: number;
}

/** Each op writes `bytes` random bytes at a random offset of a random page. */
export interface RandomWorkload {
  readonly kind: "random";
  /** Bytes of pages dirtied per second (ops/s = rate / 4096); 0 = as fast as possible. */
  readonly rate: number;
  /** Optional hot set; null = pages are chosen uniformly. */
  readonly hot: HotSet | null;
  /** Bytes written per op, 1-4096. */
  readonly bytes: number;
  /**
   * Bytes/s of 4 KiB writes at random 4 KiB-aligned offsets of the guest's disk
   * (needs `--disk`); absent = no disk writes. Not part of the migrated device state.
   */
  readonly disk?: number;
}

/** A parsed `--workload` value. */
export type WorkloadSpec = IdleWorkload | AbWorkload | RandomWorkload;

/** Thrown for a workload text or spec that is malformed or does not fit the guest. */
export class WorkloadError extends Error {
  override readonly name = "WorkloadError";
}

const PARAMS: { readonly [K in WorkloadKind]: readonly string[] } = {
  idle: [],
  ab: ["rate", "range"],
  random: ["rate", "hot", "bytes", "disk"],
};

/**
 * Parses `idle`, `ab[:rate=SIZE][,range=SIZE]` or
 * `random[:rate=SIZE][,hot=P%:Q%][,bytes=N][,disk=SIZE]`; throws {@link WorkloadError} saying
 * what is wrong.
 */
export function parseWorkload(text: string): WorkloadSpec {
  const fail = (reason: string): never => {
    throw new WorkloadError(`Invalid workload "${text}": ${reason}`);
  };
  const trimmed = text.trim();
  if (trimmed === "") fail("it is empty (expected idle, ab[:…] or random[:…])");
  const colon = trimmed.indexOf(":");
  const kindText = colon < 0 ? trimmed : trimmed.slice(0, colon);
  if (!isWorkloadKind(kindText)) {
    fail(`unknown kind "${kindText}" (expected ${WORKLOAD_KINDS.join(", ")})`);
  }
  const kind = kindText as WorkloadKind;
  const params = new Map<string, string>();
  if (colon >= 0) {
    if (kind === "idle") fail("idle takes no parameters");
    const list = trimmed.slice(colon + 1);
    if (list === "") fail("empty parameter list after ':'");
    for (const item of list.split(",")) {
      const eq = item.indexOf("=");
      if (eq <= 0) fail(`parameter "${item}" is not key=value`);
      const key = item.slice(0, eq);
      if (!PARAMS[kind].includes(key)) {
        fail(`unknown parameter "${key}" for ${kind} (expected ${PARAMS[kind].join(", ")})`);
      }
      if (params.has(key)) fail(`parameter "${key}" is given twice`);
      params.set(key, item.slice(eq + 1));
    }
  }
  const size = (key: string, fallback: number): number => {
    const value = params.get(key);
    if (value === undefined) return fallback;
    try {
      return parseSize(value);
    } catch {
      return fail(`${key} "${value}" is not a size`);
    }
  };
  switch (kind) {
    case "idle":
      return { kind };
    case "ab": {
      const rate = size("rate", WORKLOAD_DEFAULTS.abRate);
      const rangeText = params.get("range");
      const range = rangeText === undefined ? null : size("range", 0);
      if (range !== null && (range <= 0 || range % PAGE_SIZE !== 0)) {
        fail(`range must be a positive multiple of ${PAGE_SIZE} bytes, got ${range}`);
      }
      return { kind, rate, range };
    }
    case "random": {
      const rate = size("rate", WORKLOAD_DEFAULTS.randomRate);
      const hotText = params.get("hot");
      let hot: HotSet | null = null;
      if (hotText !== undefined) {
        const m = /^(\d{1,3})%:(\d{1,3})%$/.exec(hotText);
        const pagesPercent = m ? Number(m[1]) : NaN;
        const opsPercent = m ? Number(m[2]) : NaN;
        if (!(pagesPercent >= 1 && pagesPercent <= 100 && opsPercent >= 0 && opsPercent <= 100)) {
          fail(`hot "${hotText}" is not P%:Q% with P in 1..100 and Q in 0..100`);
        }
        hot = { pagesPercent, opsPercent };
      }
      const bytesText = params.get("bytes");
      let bytes: number = WORKLOAD_DEFAULTS.randomBytes;
      if (bytesText !== undefined) {
        bytes = /^\d{1,4}$/.test(bytesText) ? Number(bytesText) : NaN;
        if (!(bytes >= 1 && bytes <= PAGE_SIZE)) {
          fail(`bytes "${bytesText}" is not an integer in 1..${PAGE_SIZE}`);
        }
      }
      const disk = params.has("disk") ? size("disk", 0) : 0;
      return disk > 0 ? { kind, rate, hot, bytes, disk } : { kind, rate, hot, bytes };
    }
  }
}

/**
 * Writes a spec back as canonical text: parameters at their defaults are omitted,
 * sizes use the largest exact binary unit (`50M`), order is as in the grammar.
 * `parseWorkload(formatWorkload(s))` equals `s`.
 */
export function formatWorkload(spec: WorkloadSpec): string {
  const params: string[] = [];
  switch (spec.kind) {
    case "idle":
      break;
    case "ab":
      if (spec.rate !== WORKLOAD_DEFAULTS.abRate) params.push(`rate=${formatSize(spec.rate)}`);
      if (spec.range !== null) params.push(`range=${formatSize(spec.range)}`);
      break;
    case "random":
      if (spec.rate !== WORKLOAD_DEFAULTS.randomRate) params.push(`rate=${formatSize(spec.rate)}`);
      if (spec.hot !== null) params.push(`hot=${spec.hot.pagesPercent}%:${spec.hot.opsPercent}%`);
      if (spec.bytes !== WORKLOAD_DEFAULTS.randomBytes) params.push(`bytes=${spec.bytes}`);
      if (spec.disk) params.push(`disk=${formatSize(spec.disk)}`);
      break;
  }
  return params.length === 0 ? spec.kind : `${spec.kind}:${params.join(",")}`;
}

/** Formats a byte count with the largest binary unit that divides it exactly (`1536K`, `4096` → `4K`). */
export function formatSize(bytes: number): string {
  for (
    const [unit, scale] of [["T", 2 ** 40], ["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]] as const
  ) {
    if (bytes !== 0 && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return String(bytes);
}

/** True when `text` names a workload kind. */
export function isWorkloadKind(text: string): text is WorkloadKind {
  return (WORKLOAD_KINDS as readonly string[]).includes(text);
}

/**
 * Checks that a spec is well-formed (as parseWorkload would produce) and fits a first
 * RAM block of `blockLength` bytes (an `ab` range must not extend beyond it); throws
 * {@link WorkloadError} otherwise.
 */
export function assertWorkloadFits(spec: WorkloadSpec, blockLength: number): void {
  const text = describe(spec);
  const fail = (reason: string): never => {
    throw new WorkloadError(`Workload ${text} cannot run: ${reason}`);
  };
  switch (spec.kind) {
    case "idle":
      return;
    case "ab":
      checkRate(spec.rate, fail);
      if (spec.range !== null) {
        if (!Number.isSafeInteger(spec.range) || spec.range <= 0 || spec.range % PAGE_SIZE !== 0) {
          fail(`range ${spec.range} is not a positive multiple of ${PAGE_SIZE}`);
        }
        if (spec.range > blockLength) {
          fail(`range ${spec.range} exceeds the RAM block of ${blockLength} bytes`);
        }
      }
      return;
    case "random":
      checkRate(spec.rate, fail);
      if (!Number.isInteger(spec.bytes) || spec.bytes < 1 || spec.bytes > PAGE_SIZE) {
        fail(`bytes ${spec.bytes} is not an integer in 1..${PAGE_SIZE}`);
      }
      if (spec.disk !== undefined) checkRate(spec.disk, fail);
      if (spec.hot !== null) {
        const { pagesPercent: p, opsPercent: q } = spec.hot;
        if (!Number.isInteger(p) || p < 1 || p > 100 || !Number.isInteger(q) || q < 0 || q > 100) {
          fail(`hot set ${p}%:${q}% is not P%:Q% with P in 1..100 and Q in 0..100`);
        }
      }
      return;
    default:
      fail("unknown kind");
  }
}

function checkRate(rate: number, fail: (reason: string) => never): void {
  if (!Number.isSafeInteger(rate) || rate < 0) fail(`rate ${rate} is not a byte count`);
}

function describe(spec: WorkloadSpec): string {
  try {
    return `"${formatWorkload(spec)}"`;
  } catch {
    return JSON.stringify(spec);
  }
}
