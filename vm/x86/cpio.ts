/**
 * The cpio "newc" archive format (magic `070701`), the one Linux unpacks as an
 * initramfs: a writer for the x86 guest's initrd and a reader to check it. Every
 * entry gets mtime 0 and uid/gid 0, so the same files always make the same bytes.
 *
 * An entry is a 110-byte ASCII header (the magic, then 13 fields of 8 hex digits:
 * ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
 * rdevminor, namesize with its NUL, check), the NUL-terminated name padded to a
 * multiple of 4, then the data padded to a multiple of 4. `TRAILER!!!` ends it.
 */

/** One file system object in an archive. Paths are relative, without a leading `/`. */
export type CpioEntry =
  | { readonly kind: "dir"; readonly path: string; readonly mode?: number }
  | {
    readonly kind: "file";
    readonly path: string;
    readonly data: Uint8Array;
    readonly mode?: number;
  }
  | { readonly kind: "symlink"; readonly path: string; readonly target: string }
  | {
    readonly kind: "chardev";
    readonly path: string;
    readonly major: number;
    readonly minor: number;
    readonly mode?: number;
  };

/** Thrown when an archive cannot be written (bad entry) or read (malformed bytes). */
export class CpioError extends Error {
  override readonly name = "CpioError";
}

/** The newc magic. */
export const CPIO_MAGIC = "070701";
/** The name of the entry that ends an archive. */
export const CPIO_TRAILER = "TRAILER!!!";
const HEADER_SIZE = 110;

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFMT = 0o170000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Rounds `n` up to a multiple of 4. */
function pad4(n: number): number {
  return (n + 3) & ~3;
}

function hex8(value: number, field: string, path: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new CpioError(`${path}: ${field} ${value} does not fit 8 hex digits`);
  }
  return value.toString(16).padStart(8, "0");
}

function checkPath(path: string): void {
  if (path === "" || path.startsWith("/") || path.includes("\0") || path === CPIO_TRAILER) {
    throw new CpioError(`bad archive path ${JSON.stringify(path)}`);
  }
}

interface RawEntry {
  name: string;
  mode: number;
  nlink: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Uint8Array;
}

function raw(entry: CpioEntry): RawEntry {
  checkPath(entry.path);
  const perm = (fallback: number, mode?: number) => {
    const m = mode ?? fallback;
    if (!Number.isInteger(m) || m < 0 || m > 0o7777) {
      throw new CpioError(`${entry.path}: permission bits ${m} out of range`);
    }
    return m;
  };
  const base = { name: entry.path, rdevMajor: 0, rdevMinor: 0 };
  switch (entry.kind) {
    case "dir":
      return { ...base, mode: S_IFDIR | perm(0o755, entry.mode), nlink: 2, data: new Uint8Array() };
    case "file":
      return { ...base, mode: S_IFREG | perm(0o644, entry.mode), nlink: 1, data: entry.data };
    case "symlink":
      if (entry.target === "") throw new CpioError(`${entry.path}: empty symlink target`);
      return { ...base, mode: S_IFLNK | 0o777, nlink: 1, data: encoder.encode(entry.target) };
    case "chardev":
      return {
        ...base,
        mode: S_IFCHR | perm(0o600, entry.mode),
        nlink: 1,
        rdevMajor: entry.major,
        rdevMinor: entry.minor,
        data: new Uint8Array(),
      };
  }
}

/**
 * Writes `entries`, in order, as one newc archive ending in the trailer. A parent
 * directory must come before what it holds (the kernel creates nothing implicitly).
 */
export function writeCpio(entries: readonly CpioEntry[]): Uint8Array<ArrayBuffer> {
  const raws = entries.map(raw);
  const seen = new Set<string>();
  for (const r of raws) {
    if (seen.has(r.name)) throw new CpioError(`${r.name}: appears twice`);
    seen.add(r.name);
  }
  raws.push({
    name: CPIO_TRAILER,
    mode: 0,
    nlink: 1,
    rdevMajor: 0,
    rdevMinor: 0,
    data: new Uint8Array(),
  });
  const names = raws.map((r) => encoder.encode(r.name));
  let size = 0;
  for (let i = 0; i < raws.length; i++) {
    size += pad4(HEADER_SIZE + names[i].length + 1) + pad4(raws[i].data.length);
  }
  const out = new Uint8Array(size);
  let at = 0;
  raws.forEach((r, i) => {
    const fields = [
      i + 1, // ino: distinct per entry, so no two files look like hard links
      r.mode,
      0, // uid
      0, // gid
      r.nlink,
      0, // mtime
      r.data.length,
      0, // devmajor
      0, // devminor
      r.rdevMajor,
      r.rdevMinor,
      names[i].length + 1,
      0, // check
    ];
    const header = CPIO_MAGIC + fields.map((v, f) => hex8(v, `field ${f}`, r.name)).join("");
    out.set(encoder.encode(header), at);
    out.set(names[i], at + HEADER_SIZE);
    at += pad4(HEADER_SIZE + names[i].length + 1); // the NUL and padding are already zero
    out.set(r.data, at);
    at += pad4(r.data.length);
  });
  return out;
}

/**
 * Reads a newc archive back into entries, up to its trailer. Throws {@link CpioError}
 * on a bad magic, a truncated entry or a missing trailer.
 */
export function readCpio(bytes: Uint8Array): CpioEntry[] {
  const entries: CpioEntry[] = [];
  let at = 0;
  for (;;) {
    if (at + HEADER_SIZE > bytes.length) throw new CpioError(`truncated header at byte ${at}`);
    const header = decoder.decode(bytes.subarray(at, at + HEADER_SIZE));
    if (!header.startsWith(CPIO_MAGIC)) throw new CpioError(`bad magic at byte ${at}`);
    const field = (f: number) => {
      const text = header.slice(6 + 8 * f, 14 + 8 * f);
      if (!/^[0-9a-fA-F]{8}$/.test(text)) throw new CpioError(`bad header field at byte ${at}`);
      return parseInt(text, 16);
    };
    const mode = field(1);
    const fileSize = field(6);
    const nameSize = field(11);
    if (nameSize < 1) throw new CpioError(`empty name at byte ${at}`);
    const nameEnd = at + HEADER_SIZE + nameSize;
    const dataStart = at + pad4(HEADER_SIZE + nameSize);
    const dataEnd = dataStart + fileSize;
    if (nameEnd > bytes.length || dataEnd > bytes.length) {
      throw new CpioError(`truncated entry at byte ${at}`);
    }
    const name = decoder.decode(bytes.subarray(at + HEADER_SIZE, nameEnd - 1));
    if (name === CPIO_TRAILER) return entries;
    const data = bytes.slice(dataStart, dataEnd);
    const perm = mode & 0o7777;
    switch (mode & S_IFMT) {
      case S_IFDIR:
        entries.push({ kind: "dir", path: name, mode: perm });
        break;
      case S_IFREG:
        entries.push({ kind: "file", path: name, data, mode: perm });
        break;
      case S_IFLNK:
        entries.push({ kind: "symlink", path: name, target: decoder.decode(data) });
        break;
      case S_IFCHR:
        entries.push({
          kind: "chardev",
          path: name,
          major: field(9),
          minor: field(10),
          mode: perm,
        });
        break;
      default:
        throw new CpioError(`${name}: unsupported file type ${(mode & S_IFMT).toString(8)}`);
    }
    at = dataStart + pad4(fileSize);
  }
}
