import type { Guest } from "../vm/guest.ts";
import { QEVM_MAGIC, QEVM_VERSION, Section, SectionName } from "./format/constants.ts";

/** "FERR", the first bytes of an encrypted snapshot (transports/sealed.ts), named when read without its key. */
const FERRYENC_HEAD = 0x46455252;
import { StreamError, type StreamReader } from "./format/reader.ts";
import { RamLoader } from "./sections/ram.ts";
import type { SectionLoader, SectionRegistry } from "./sections/section.ts";
import { defaultSections } from "./sections/registry.ts";
import { MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PING } from "./return_path.ts";
import { IntegrityError, MigrationDigests, parseIntegrityRecord } from "./integrity.ts";
import { sharedKernels } from "./wasm/kernels.ts";
import type { CompressMethod } from "./format/compression.ts";
import { MIG_CMD_FERRY_MIGRATION_ID, MIG_CMD_FERRY_RESUME, readMigrationId } from "./resume.ts";
import type { MultifdLoad } from "./multifd/receiver.ts";
import {
  MIG_CMD_FERRY_MULTIFD,
  MIG_CMD_FERRY_MULTIFD_FLUSH,
  MULTIFD_COMMAND_BYTES,
} from "./multifd/setup.ts";

/** Largest vmdescription JSON accepted (QEMU's own are far smaller). */
export const MAX_VMDESC_BYTES = 1 << 20;

/** What a successful load found. */
export interface LoadResult {
  /** Bytes read from the stream. */
  readonly bytes: number;
  /** ZERO pages applied. */
  readonly zeroPages: number;
  /** Full pages applied. */
  readonly normalPages: number;
  /** Pages of compressed runs applied. */
  readonly compressedPages: number;
  /** Same-page references applied. */
  readonly refPages: number;
  /** The vmdescription JSON, if the stream carried one. */
  readonly description: unknown;
  /** The source opened the return path (COMMAND OPEN_RETURN_PATH): it awaits the switchover handshake. */
  readonly returnPath: boolean;
}

/** Options of loadStream(). */
export interface LoadOptions {
  /** Called with the bytes received so far, as the stream is read. */
  readonly onBytes?: (n: number) => void;
  /**
   * Answers a `COMMAND PING` (after OPEN_RETURN_PATH) once everything before it is
   * loaded; without it a PING is an error.
   */
  readonly onPing?: (value: number) => Promise<void>;
  /** Called when the stream opens the return path (the source then reads failure reports on it). */
  readonly onReturnPath?: () => void;
  /**
   * The `verify` capability: digest everything loaded and compare it with the
   * integrity record in the source's vmdescription, which must be there.
   */
  readonly verify?: boolean;
  /** Most page records the stream may carry before it is cut (default: no limit). */
  readonly maxRecords?: number;
  /** The sections this ferry takes (default: its own, defaultSections()). */
  readonly sections?: SectionRegistry;
  /** This destination's `compress_method`: compressed RAM runs must use it (default none). */
  readonly compression?: CompressMethod;
  /** This destination's `page_refs` capability: same-page references need it. */
  readonly pageRefs?: boolean;
  /**
   * What the load keeps across connections (createLoadState): given again with a
   * reader on a resumed connection, the load carries on between two sections
   * (engine/resume.ts); the header was read by the resume handshake.
   */
  readonly state?: LoadState;
  /** This destination's multifd channels (multifd_channels > 1); a stream announcing multifd needs them. */
  readonly multifd?: MultifdLoad;
}

/**
 * A load's progress, kept outside loadStream() so that an interrupted pre-copy can
 * carry on over a new connection with the same loaders, digests and open sections
 * (docs/ARCHITECTURE.md, "Resuming an interrupted pre-copy").
 */
export interface LoadState {
  readonly digests: MigrationDigests | undefined;
  readonly loaders: ReadonlyMap<string, SectionLoader>;
  readonly sections: Map<number, OpenSection>;
  /** The header was read (a later call goes on from a section boundary). */
  begun: boolean;
  sawSection: boolean;
  returnPath: boolean;
  /** The id the source gave the migration (COMMAND FERRY_MIGRATION_ID), if it did. */
  migrationId: string | undefined;
  /** True once the stop-and-copy began: a section END, a device section or EOF was read. */
  final: boolean;
}

/** A fresh LoadState for loading into `guest` with `options`. */
export function createLoadState(guest: Guest, options: LoadOptions = {}): LoadState {
  const digests = options.verify ? new MigrationDigests(guest.blocks) : undefined;
  const registry = options.sections ?? defaultSections();
  const loadCtx = {
    guest,
    maxRecords: options.maxRecords ?? Infinity,
    ...(digests ? { digests } : {}),
    compression: options.compression ?? "none",
    pageRefs: options.pageRefs ?? false,
    ...(options.multifd ? { multifd: options.multifd } : {}),
  };
  return {
    digests,
    loaders: new Map(
      registry.loadable.map((section) => [section.name, section.loader(loadCtx)]),
    ),
    sections: new Map(),
    begun: false,
    sawSection: false,
    returnPath: false,
    migrationId: undefined,
    final: false,
  };
}

interface OpenSection {
  readonly name: string;
  ended: boolean;
}

/**
 * Loads a savevm v3 stream into a stopped guest (QEMU's qemu_loadvm_state),
 * validating every field: magic, version, section types, ids, names, versions and
 * footers, and (through the section loaders) every RAM record. The first problem
 * throws a StreamError naming it and its byte offset. Memory outside the guest's
 * RAM blocks is never written. With `verify`, a stream whose content differs from
 * what its source digested throws an IntegrityError naming what differs. A
 * one-way stream must end right after its vmdescription.
 */
export async function loadStream(
  r: StreamReader,
  guest: Guest,
  options: LoadOptions = {},
): Promise<LoadResult> {
  const { onBytes, onPing } = options;
  const registry = options.sections ?? defaultSections();
  const st = options.state ?? createLoadState(guest, options);
  /** A loader per registered section, made up front (each one says at EOF what it misses). */
  const { digests, loaders, sections } = st;
  if (!st.begun) await readHeader(r, guest);
  st.begun = true;
  for (;;) {
    onBytes?.(r.received);
    await r.need(1);
    const at = r.offset;
    const type = r.u8();
    switch (type) {
      case Section.CONFIGURATION: {
        if (st.sawSection) throw new StreamError(at, "configuration section after other sections");
        await r.need(4);
        const len = r.be32();
        if (len > 255) throw new StreamError(at, `machine type name of ${len} bytes (at most 255)`);
        await r.need(len);
        const machine = new TextDecoder().decode(r.take(len));
        if (!registry.acceptsMachine(machine)) {
          throw new StreamError(
            at,
            `machine type "${machine}" does not match this guest's "${registry.machineType}"`,
          );
        }
        for (const loader of loaders.values()) loader.configuration?.(machine);
        st.sawSection = true;
        break;
      }
      case Section.START:
      case Section.FULL: {
        st.sawSection = true;
        if (type === Section.FULL) st.final = true;
        await r.need(5);
        const id = r.be32();
        const name = await r.str8();
        await r.need(8);
        const instance = r.be32();
        const ver = r.be32();
        if (sections.has(id)) throw new StreamError(at, `section id ${id} used twice`);
        const kind = type === Section.START ? "live" : "device";
        // Under a peer profile, device sections ferry does not know go to its loader as they are.
        const other = kind === "device" && !registry.get(name)
          ? registry.profile.otherDevices
          : undefined;
        if (instance !== 0 && !other) {
          throw new StreamError(at, `section "${name}" has instance ${instance}, expected 0`);
        }
        const section = other ?? registry.get(name)?.section;
        if (!section || section.kind !== kind) {
          throw new StreamError(at, `unknown ${kind} section "${name}"`);
        }
        if (!other && ver !== section.version) {
          throw new StreamError(
            at,
            `section "${name}" version ${ver}, expected ${section.version}`,
          );
        }
        if (!other && [...sections.values()].some((s) => s.name === name)) {
          throw new StreamError(
            at,
            `section "${name}" ${kind === "live" ? "started" : "sent"} twice`,
          );
        }
        sections.set(id, { name: section.name, ended: kind === "device" });
        const payload = await loaders.get(section.name)!.load(
          r,
          kind === "live" ? "start" : "full",
          at,
          { id, name, instance, version: ver },
        );
        if (kind === "device" && digests && payload) {
          digests.addDevice(
            name,
            instance,
            payload.length,
            sharedKernels().digest(payload, 0, payload.length),
          );
        }
        await footer(r, id);
        break;
      }
      case Section.PART:
      case Section.END: {
        await r.need(4);
        const id = r.be32();
        const section = sections.get(id);
        if (!section) throw new StreamError(at, `section id ${id} was never started`);
        if (section.ended) {
          throw new StreamError(at, `section id ${id} ("${section.name}") already ended`);
        }
        if (type === Section.END) section.ended = st.final = true;
        await loaders.get(section.name)!.load(r, type === Section.END ? "end" : "part", at);
        await footer(r, id);
        break;
      }
      case Section.COMMAND: {
        st.sawSection = true;
        await r.need(4);
        const cmd = r.be16();
        const len = r.be16();
        if (cmd === MIG_CMD_PING) {
          if (len !== 4) {
            throw new StreamError(at, `command PING with ${len} bytes of data (expects 4)`);
          }
          if (!st.returnPath || !onPing) {
            throw new StreamError(at, "command PING without an open return path to answer on");
          }
          await r.need(4);
          await onPing(r.be32());
          break;
        }
        if (cmd === MIG_CMD_FERRY_RESUME) {
          options.onReturnPath?.(); // the source reads the answer: tell it why not
          throw new StreamError(
            at,
            "the source asks to resume an interrupted migration, but this destination holds " +
              "none (it was armed for a new one)",
          );
        }
        if (cmd === MIG_CMD_FERRY_MIGRATION_ID) {
          st.migrationId = await readMigrationId(r, len, at);
          break;
        }
        if (cmd === MIG_CMD_FERRY_MULTIFD_FLUSH) {
          if (!options.multifd || len !== 0) {
            throw new StreamError(at, "a multifd FLUSH command without multifd, or with data");
          }
          await options.multifd.flush(at);
          break;
        }
        if (cmd === MIG_CMD_FERRY_MULTIFD) {
          // docs/ARCHITECTURE.md, "Multifd": the page channels connect after this.
          if (!options.multifd) {
            throw new StreamError(
              at,
              "the source sends pages over multifd channels, but this destination's " +
                "multifd_channels is 1: set the same on both ends",
            );
          }
          if (len !== MULTIFD_COMMAND_BYTES) {
            throw new StreamError(at, `command MULTIFD with ${len} bytes of data`);
          }
          await r.need(len);
          const count = r.be16();
          options.multifd.open(count, r.take(len - 2).slice(), st.digests, at);
          break;
        }
        if (cmd !== MIG_CMD_OPEN_RETURN_PATH) {
          throw new StreamError(at, `unknown command 0x${cmd.toString(16)}`);
        }
        if (len !== 0) {
          throw new StreamError(
            at,
            `command OPEN_RETURN_PATH with ${len} bytes of data (expects 0)`,
          );
        }
        if (st.returnPath) throw new StreamError(at, "return path opened twice");
        st.returnPath = true;
        options.onReturnPath?.();
        break;
      }
      case Section.EOF: {
        st.final = true;
        for (const [id, s] of sections) {
          if (!s.ended) {
            throw new StreamError(
              at,
              `stream ended while section ${id} ("${s.name}") was still open`,
            );
          }
        }
        // A section that must have come says so now.
        for (const loader of loaders.values()) loader.finish(at);
        const description = await readDescription(r);
        if (!st.returnPath && !(await r.atEnd())) {
          throw new StreamError(r.offset, "unexpected bytes after the vmdescription");
        }
        if (digests) verifyIntegrity(digests, description);
        // What a section wrote durably (a disk image) is committed before the
        // caller can report the migration completed.
        for (const loader of loaders.values()) await loader.commit?.();
        onBytes?.(r.received);
        const ram = loaders.get(SectionName.RAM);
        // A profile's ram loader (engine/qemu_profile.ts) wraps a RamLoader and shows its stats.
        const stats = ram instanceof RamLoader
          ? ram.stats
          : (ram as Partial<Pick<RamLoader, "stats">> | undefined)?.stats ??
            { zeroPages: 0, normalPages: 0, compressedPages: 0, refPages: 0 };
        return {
          bytes: r.offset,
          zeroPages: stats.zeroPages,
          normalPages: stats.normalPages,
          compressedPages: stats.compressedPages,
          refPages: stats.refPages,
          description,
          returnPath: st.returnPath,
        };
      }
      default:
        throw new StreamError(at, `unknown section type 0x${type.toString(16)}`);
    }
  }
}

/** Compares what was loaded with the source's integrity record (in the vmdescription). */
function verifyIntegrity(digests: MigrationDigests, description: unknown): void {
  const record = (description as { ferry?: { integrity?: unknown } } | undefined)?.ferry
    ?.integrity;
  if (record === undefined) {
    throw new IntegrityError(
      "the stream carries no integrity record (its source has the verify capability off); " +
        "turn verify off on this destination to accept such a stream",
      "record",
    );
  }
  digests.verify(parseIntegrityRecord(record));
}

/** Reads and checks the stream header (magic and version); first clears the guest's dirty log. */
async function readHeader(r: StreamReader, guest: Guest): Promise<void> {
  for (const block of guest.blocks) block.syncDirty(new Uint32Array(block.dirty.length));
  await r.need(8);
  const magic = r.be32();
  if (magic === FERRYENC_HEAD) {
    throw new StreamError(
      0,
      'it is an encrypted snapshot ("FERRYENC"): set snapshot_key (--snapshot-key) to the key ' +
        "it was made with",
    );
  }
  if (magic !== QEVM_MAGIC) {
    throw new StreamError(0, `bad magic 0x${hex8(magic)}, expected 0x${hex8(QEVM_MAGIC)} ("QEVM")`);
  }
  const version = r.be32();
  if (version !== QEVM_VERSION) {
    throw new StreamError(4, `unsupported stream version ${version}, expected ${QEVM_VERSION}`);
  }
}

async function footer(r: StreamReader, id: number): Promise<void> {
  await r.need(5);
  const at = r.offset;
  const mark = r.u8();
  if (mark !== Section.FOOTER) {
    throw new StreamError(
      at,
      `expected section footer 0x7e for section ${id}, found 0x${mark.toString(16)}`,
    );
  }
  const got = r.be32();
  if (got !== id) throw new StreamError(at, `section footer names section ${got}, expected ${id}`);
}

/** Reads the optional vmdescription after EOF; a stream may also just end. */
async function readDescription(r: StreamReader): Promise<unknown> {
  if (await r.atEnd()) return undefined;
  const at = r.offset;
  await r.need(5);
  const type = r.u8();
  if (type !== Section.VMDESCRIPTION) {
    throw new StreamError(
      at,
      `expected vmdescription (0x06) after EOF, found 0x${type.toString(16)}`,
    );
  }
  const len = r.be32();
  if (len > MAX_VMDESC_BYTES) {
    throw new StreamError(at, `vmdescription of ${len} bytes is too large`);
  }
  const chunks: Uint8Array[] = [];
  let left = len;
  while (left > 0) {
    const n = Math.min(left, 1 << 16);
    await r.need(n);
    chunks.push(r.take(n).slice());
    left -= n;
  }
  const text = new TextDecoder().decode(concat(chunks, len));
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new StreamError(at, "vmdescription is not valid JSON", { cause: e });
  }
  if (
    typeof json !== "object" || json === null ||
    (json as { page_size?: unknown }).page_size !== 4096
  ) {
    throw new StreamError(at, "vmdescription does not describe 4096-byte pages");
  }
  return json;
}

function concat(chunks: Uint8Array[], len: number): Uint8Array {
  const out = new Uint8Array(len);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, "0");
}
