/**
 * The `file:PATH[,offset=N]` transport: ferry's snapshot save and restore.
 *
 * Outgoing, the stream goes to a temporary file beside PATH
 * (`PATH.tmp-<random>`, mode 0600, or the mode of the file it replaces). With an
 * offset, the first N bytes of an existing PATH are copied in first (zeros where
 * PATH is shorter or absent), so the bytes before the offset are kept and the
 * stream starts exactly at byte N. finish() fsyncs the file, renames it over PATH
 * — an existing PATH is replaced, atomically — and fsyncs the directory. A failed
 * or cancelled save removes the temporary file: PATH never holds a truncated
 * stream, and an old PATH stays as it was.
 *
 * Incoming, PATH is opened at listen() time (a missing file fails there) and read
 * from byte N to its end.
 * @module
 */
import { describeNetError } from "./channel.ts";
import { FsChannel, SYNC_EVERY_BYTES } from "./fs_channel.ts";
import { type Channel, type Listener, TransportError } from "./transport.ts";
import { formatUri, parseUri } from "./uri.ts";

/** Bytes copied at a time when preserving the prefix before the offset. */
const COPY_CHUNK = 1 << 20;

type FileUri = { readonly path: string; readonly offset: number };

function parseFileUri(uri: string): FileUri {
  const parsed = parseUri(uri);
  if (parsed.scheme !== "file") {
    throw new TransportError(
      "bad-uri",
      `Invalid migration URI "${uri}": expected file:PATH[,offset=N]`,
    );
  }
  return parsed;
}

function directoryOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash <= 0 ? "/" : path.slice(0, slash);
}

function statOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.statSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/** A reason for a file error, naming a missing directory rather than "no such file". */
function describeFsError(err: unknown, path: string): string {
  if (err instanceof Deno.errors.NotFound) {
    const dir = directoryOf(path);
    if (!statOrNull(dir)) return `directory ${dir} does not exist`;
  }
  return describeNetError(err);
}

/** A random suffix for temporary names. */
function randomSuffix(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(6)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** Copies the first `length` bytes of `from` into `to` (at its current position). */
async function copyPrefix(
  from: string,
  to: Deno.FsFile,
  length: number,
  signal?: AbortSignal,
): Promise<void> {
  using src = await Deno.open(from, { read: true });
  const buf = new Uint8Array(Math.min(COPY_CHUNK, Math.max(1, length)));
  let left = length;
  while (left > 0) {
    signal?.throwIfAborted();
    const n = await src.read(buf.subarray(0, Math.min(buf.length, left)));
    if (n === null) break; // the file shrank meanwhile: the rest stays zero
    let off = 0;
    while (off < n) off += await to.write(buf.subarray(off, n));
    left -= n;
  }
}

/** fsyncs a directory so a rename in it is durable (best effort: not every filesystem allows it). */
async function syncDirectory(dir: string): Promise<void> {
  try {
    using d = await Deno.open(dir, { read: true });
    await d.sync();
  } catch {
    // Some filesystems refuse fsync on a directory; the rename itself succeeded.
  }
}

/**
 * Opens `file:PATH[,offset=N]` for an outgoing migration (a snapshot save): see
 * the module documentation for the temporary file, the preserved prefix and the
 * atomic rename on finish(). Failures to create the file reject with a
 * `connect-failed` TransportError ("directory /x does not exist", "permission
 * denied", "/x is a directory"); an abort rejects with `signal.reason` and leaves
 * nothing behind.
 */
export async function connectFile(uri: string, signal?: AbortSignal): Promise<Channel> {
  const { path, offset } = parseFileUri(uri);
  const address = formatUri({ scheme: "file", path, offset });
  const failed = (reason: string, cause?: unknown) =>
    new TransportError("connect-failed", `Cannot write ${address}: ${reason}`, { cause });
  signal?.throwIfAborted();

  let existing: Deno.FileInfo | null;
  try {
    existing = statOrNull(path);
  } catch (err) {
    throw failed(describeFsError(err, path), err);
  }
  if (existing && !existing.isFile) {
    throw failed(
      `${path} is ${existing.isDirectory ? "a directory" : "not a regular file"}; ` +
        "file: writes regular files only (use fd: or exec: for pipes and devices)",
    );
  }
  const mode = existing?.mode != null ? existing.mode & 0o7777 : 0o600;
  const temp = `${path}.tmp-${randomSuffix()}`;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(temp, { write: true, createNew: true, mode });
  } catch (err) {
    throw failed(describeFsError(err, temp), err);
  }
  const discard = () => {
    try {
      file.close();
    } catch {
      // Already closed.
    }
    try {
      Deno.removeSync(temp);
    } catch {
      // Already gone.
    }
  };
  try {
    await Deno.chmod(temp, mode); // exactly `mode`, whatever the umask
    if (offset > 0) {
      if (existing && existing.size > 0) {
        await copyPrefix(path, file, Math.min(offset, existing.size), signal);
      }
      await file.truncate(offset); // zero-fills up to the offset, keeps a longer prefix
      await file.seek(offset, Deno.SeekMode.Start);
    }
    signal?.throwIfAborted();
  } catch (err) {
    discard();
    if (signal?.aborted && err === signal.reason) throw err;
    throw failed(describeFsError(err, path), err);
  }

  return new FsChannel(file, address, "write", {
    syncEvery: SYNC_EVERY_BYTES,
    beforeClose: (f) => f.sync(),
    committed: async () => {
      await Deno.rename(temp, path);
      await syncDirectory(directoryOf(path));
    },
    abandoned: () => {
      try {
        Deno.removeSync(temp);
      } catch {
        // Renamed already, or never fully created.
      }
    },
  });
}

/** A listener that already holds the snapshot open; accept() hands it out once. */
class FileListener implements Listener {
  /** The one channel there will be. */
  readonly peers = "one" as const;
  readonly address: string;
  #file: Deno.FsFile | null;
  #closed = false;

  constructor(file: Deno.FsFile, address: string) {
    this.#file = file;
    this.address = address;
  }

  /** Returns a channel reading the file from the offset to its end (once). */
  accept(): Promise<Channel> {
    if (this.#closed) return Promise.reject(new Error(`Listener ${this.address} is closed`));
    const file = this.#file;
    if (!file) return Promise.reject(new Error(`Listener ${this.address} was already accepted`));
    this.#file = null;
    return Promise.resolve(new FsChannel(file, this.address, "read"));
  }

  /** Stops listening; closes the file unless a channel took it. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#file?.close();
    } catch {
      // Already closed.
    }
    this.#file = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens `file:PATH[,offset=N]` for an incoming migration (a snapshot restore)
 * and positions it at the offset. A missing or unreadable file, a directory, or
 * a file no longer than the offset rejects with a `listen-failed`
 * TransportError at once, before the guest is touched.
 */
export async function listenFile(uri: string): Promise<Listener> {
  const { path, offset } = parseFileUri(uri);
  const address = formatUri({ scheme: "file", path, offset });
  const failed = (reason: string, cause?: unknown) =>
    new TransportError("listen-failed", `Cannot read ${address}: ${reason}`, { cause });
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    throw failed(describeFsError(err, path), err);
  }
  try {
    const info = await file.stat();
    if (!info.isFile) {
      throw failed(`${path} is ${info.isDirectory ? "a directory" : "not a regular file"}`);
    }
    if (info.size <= offset) {
      throw failed(
        `the file is ${info.size} bytes, so nothing starts at offset ${offset}`,
      );
    }
    if (offset > 0) await file.seek(offset, Deno.SeekMode.Start);
  } catch (err) {
    file.close();
    if (err instanceof TransportError) throw err;
    throw failed(describeFsError(err, path), err);
  }
  return new FileListener(file, address);
}
