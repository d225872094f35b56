/** "QEVM": the first four bytes of every savevm stream. */
export const QEVM_MAGIC = 0x5145564d;
/** The savevm stream version ferry writes and accepts. */
export const QEVM_VERSION = 3;

/** Section type bytes of the savevm v3 stream. */
export const Section = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/**
 * The page size of the stream (QEMU's TARGET_PAGE_SIZE on x86): every RAM record
 * carries one page of this many bytes. The guest's own page size (vm/ram.ts) is
 * the same; a test holds them equal.
 */
export const PAGE_SIZE = 4096;
/** log2(PAGE_SIZE). */
export const PAGE_SHIFT = 12;

/** Flag bits in the low bits of a RAM record's be64 `offset | flags`. */
export const RamFlag = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  /**
   * QEMU 8's MULTIFD_FLUSH: every multifd channel has sent its pages up to its
   * next sync point, which the destination waits for (docs/ARCHITECTURE.md, "Multifd").
   */
  MULTIFD_FLUSH: 0x200,
  /** ferry's own: a compressed run of pages of one 32-page group (not QEMU's). */
  COMPRESSED: 0x400,
  /** ferry's own: a page equal to another page the destination holds (not QEMU's). */
  REF: 0x800,
} as const;

/** Mask of the flag bits inside a RAM record header (page-offset bits). */
export const RAM_FLAG_MASK = 0xfff;

/** Version of the `ram` live section (QEMU's ram_save handlers). */
export const RAM_SECTION_VERSION = 4;
/** Version of ferry's `vcpu` device section. */
export const VCPU_SECTION_VERSION = 1;
/** Version of the `x86` device section (the x86 guest's emulator state). */
export const X86_SECTION_VERSION = 1;
/** The machine type named in the configuration section: the synthetic guest's. */
export const MACHINE_TYPE = "ferry-pc";
/** The x86 guest's machine type (a PC emulated by v86). */
export const X86_MACHINE_TYPE = "ferry-x86";

/** Section id strings ferry knows. */
export const SectionName = {
  RAM: "ram",
  VCPU: "vcpu",
  X86: "x86",
} as const;
