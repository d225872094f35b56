/**
 * The section interface, in the shape of QEMU's SaveVMHandlers
 * (docs/ARCHITECTURE.md, "Sections"). A section is one named part of the savevm
 * stream. Its saver writes it for one migration; its loader reads it for one
 * load. The outgoing loop (engine/outgoing.ts) and the loader (engine/incoming.ts)
 * know no section by name: they dispatch through a {@link SectionRegistry}.
 *
 * There are two kinds:
 * - `live` sections (QEMU's iterative ones: `ram`, `block`) go out as START, then
 *   PART sections while the guest runs, then END once it is stopped;
 * - `device` sections (`vcpu`, `x86`) go out once, as FULL, with the guest stopped, and
 *   are described in the vmdescription JSON.
 * @module
 */
import type { MultifdSink } from "../multifd/sender.ts";
import type { MultifdLoad } from "../multifd/receiver.ts";
import type { Guest } from "../../vm/guest.ts";
import { MACHINE_TYPE } from "../format/constants.ts";
import type { StreamReader } from "../format/reader.ts";
import type { StreamWriter } from "../format/writer.ts";
import type { MigrationDigests } from "../integrity.ts";
import type { Capabilities, Parameters } from "../params.ts";
import type { CompressMethod } from "../format/compression.ts";
import type { PeerKind } from "../contract.ts";

/** What a saver is made from: the migration's guest, settings and digests. */
export interface SaveContext {
  readonly guest: Guest;
  /** The engine's clock, ms. */
  readonly now: () => number;
  readonly params: Readonly<Parameters>;
  readonly capabilities: Readonly<Capabilities>;
  /** Block migration: `blk` copies the whole disk, `inc` what changed since a shared base. */
  readonly block?: { readonly incremental: boolean };
  /** With `verify`: where savers record what they send. */
  readonly digests?: MigrationDigests;
  /**
   * The stream goes to a file or a command (file:, exec:), read later by tools
   * that may start from zeroed memory: RAM sends pages zeroed after they went out
   * with data as full pages (RamSaverOptions.zeroedAsPages).
   */
  readonly snapshot?: boolean;
  /** With multifd_channels > 1: the channels RAM pages go over (docs/ARCHITECTURE.md, "Multifd"). */
  readonly multifd?: MultifdSink;
}

/** What a loader is made from. */
export interface LoadContext {
  readonly guest: Guest;
  /** With `verify`: where loaders record what they write. */
  readonly digests?: MigrationDigests;
  /** Most page records a stream may carry (a stream that never ends is cut). */
  readonly maxRecords: number;
  /** This destination's `compress_method`: compressed RAM runs must use it (default none). */
  readonly compression?: CompressMethod;
  /** This destination's `page_refs` capability: same-page references need it. */
  readonly pageRefs?: boolean;
  /** This destination's multifd channels, which the stream's FLUSH records wait for. */
  readonly multifd?: MultifdLoad;
}

/** The outgoing half of a live section (QEMU's save_setup, state_pending, save_live_iterate, save_live_complete). */
export interface LiveSaver {
  /**
   * At most this many bytes per iterate() before the next section's turn. Sections
   * with a cap go first in each round, so `ram`, which takes the rest of the
   * window, cannot starve them.
   */
  readonly turnBytes?: number;
  /** Writes the START payload. */
  setup(w: StreamWriter): Promise<void>;
  /**
   * Bytes still to send as they would go on the wire (QEMU's pending estimate);
   * `maxSize` is what a switchover may send now: below it a saver may refresh its
   * view (a dirty-log sync) before answering.
   */
  pending(maxSize: number): number;
  /** Bytes left if the guest stopped now, counting what it dirtied since the last look. */
  readonly backlogBytes: number;
  /** Writes a PART payload until `stop()` says the window's budget is spent (or nothing is left). */
  iterate(w: StreamWriter, stop: () => boolean): Promise<unknown>;
  /** Writes the END payload: everything left, with the guest stopped. */
  complete(w: StreamWriter): Promise<unknown>;
}

/** The outgoing half of a device section (QEMU's vmsd save). */
export interface DeviceSaver {
  /**
   * The FULL payload, taken with the guest stopped. The loop writes it, and with
   * `verify` digests it: a device section needs no integrity code of its own.
   * A device that lives on another thread (the x86 emulator) answers with a promise.
   */
  state(): Uint8Array | Promise<Uint8Array>;
  /**
   * The section's entry in the vmdescription JSON (QEMU's vmsd description), or
   * the entries of every section {@link sections} writes.
   */
  describe(): Record<string, unknown> | Record<string, unknown>[];
  /**
   * Instead of one FULL section under the registry's id: several, each with its
   * own id, name, instance and version (QEMU's device sections replayed
   * verbatim under the qemu profile; `state()` is then not called).
   */
  sections?(): readonly DeviceSection[];
}

/** What a START or FULL section header says (QEMU's idstr, instance_id and version_id). */
export interface SectionHeader {
  readonly id: number;
  readonly name: string;
  readonly instance: number;
  readonly version: number;
}

/** One FULL device section: its header and its payload. */
export interface DeviceSection extends SectionHeader {
  readonly payload: Uint8Array;
}

/**
 * How a registry departs from ferry's own streams, for a peer that is not a
 * ferry (the qemu profile, engine/qemu_profile.ts; docs/ARCHITECTURE.md, "QEMU
 * peers").
 */
export interface RegistryProfile {
  /** Who this registry's streams go to and come from (default another ferry). */
  readonly peer?: PeerKind;
  /** True when a stream naming this machine type may be loaded (default: the registry's own). */
  acceptsMachine?(machine: string): boolean;
  /** The machine type an outgoing stream names (default: the registry's own). */
  outgoingMachine?(): string;
  /** The section id a registered section goes out under (default: its registration index). */
  sectionId?(name: string, index: number): number;
  /**
   * The loader of device sections no registered section names, with any instance
   * id and version; its loader gets each section's header.
   */
  readonly otherDevices?: Section;
  /** False: an outgoing stream never opens the return path (the peer does not speak ferry's). */
  readonly returnPath?: boolean;
}

/** The incoming half of a section, for one load (QEMU's load_state). */
export interface SectionLoader {
  /**
   * Reads one payload: `start` (a live section's START), `part`, `end`, or `full`
   * (a device section). `at` is the stream offset of its section header. A device
   * section returns the payload bytes it read, which the loader digests with
   * `verify`.
   */
  load(
    r: StreamReader,
    phase: "start" | "part" | "end" | "full",
    at: number,
    header?: SectionHeader,
  ): Promise<Uint8Array | void>;
  /** Called with the machine type of the stream's configuration section, once accepted. */
  configuration?(machine: string): void;
  /** At EOF: a section that must have arrived and did not throws a StreamError at `at`. */
  finish(at: number): void;
  /** Once the whole stream checked out (integrity included): makes durable what the section wrote. */
  commit?(): Promise<void>;
}

/** A section kind: its name and version, and the halves it makes per migration. */
export interface Section {
  /** The section's idstr in the stream ("ram", "block", "vcpu"). */
  readonly name: string;
  readonly version: number;
  readonly kind: "live" | "device";
  /**
   * The saver for one migration, or null when this migration does not carry the
   * section (`block` without `blk`/`inc`). Live sections make a LiveSaver,
   * device sections a DeviceSaver.
   */
  saver(ctx: SaveContext): LiveSaver | DeviceSaver | null;
  /** The loader for one load. */
  loader(ctx: LoadContext): SectionLoader;
}

/**
 * The sections a ferry speaks, in registration order, which is also their
 * section id in the stream (QEMU numbers its handlers the same way). A new
 * section is one file and one `register` line.
 */
export class SectionRegistry {
  readonly #sections: Section[] = [];

  constructor(
    sections: readonly Section[] = [],
    /**
     * The machine type the stream's configuration section names; a destination
     * refuses a stream of another, before any RAM arrives.
     */
    readonly machineType: string = MACHINE_TYPE,
    /** How this registry's streams depart from ferry's own (a peer profile). */
    readonly profile: RegistryProfile = {},
  ) {
    for (const s of sections) this.register(s);
  }

  /** Adds a section under the next section id; a name may be registered once. */
  register(section: Section): this {
    if (this.get(section.name)) throw new Error(`section "${section.name}" registered twice`);
    this.#sections.push(section);
    return this;
  }

  /** Every section with its id, in order. */
  get entries(): readonly { readonly id: number; readonly section: Section }[] {
    return this.#sections.map((section, i) => ({ id: this.#id(section, i), section }));
  }

  /** The section of this name, if registered. */
  get(name: string): { readonly id: number; readonly section: Section } | undefined {
    const i = this.#sections.findIndex((s) => s.name === name);
    return i < 0 ? undefined : { id: this.#id(this.#sections[i], i), section: this.#sections[i] };
  }

  /** Every section a load may need a loader for: the registered ones and the profile's other devices. */
  get loadable(): readonly Section[] {
    const other = this.profile.otherDevices;
    return other && !this.#sections.includes(other)
      ? [...this.#sections, other]
      : [...this.#sections];
  }

  /** True when a stream naming `machine` may be loaded. */
  acceptsMachine(machine: string): boolean {
    return this.profile.acceptsMachine?.(machine) ?? machine === this.machineType;
  }

  /** The machine type an outgoing stream names. */
  get outgoingMachine(): string {
    return this.profile.outgoingMachine?.() ?? this.machineType;
  }

  #id(section: Section, index: number): number {
    return this.profile.sectionId?.(section.name, index) ?? index;
  }
}
