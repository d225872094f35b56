/**
 * ferry's API token when none is given (Jupyter's convention): a random token
 * generated at start, kept in a file only its user can read, found by clients
 * from the API's port.
 * @module
 */

/** Shortest token accepted from --token / FERRY_TOKEN. */
export const MIN_TOKEN_LENGTH = 16;

/** A token file that cannot be written, read or placed; the message says why. */
export class TokenFileError extends Error {
  override readonly name = "TokenFileError";
}

/** A new API token: 32 bytes from the system's CSPRNG, base64url without padding (43 characters). */
export function generateToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_")
    .replace(/=+$/, "");
}

/** The environment variables that place the default token file. */
export interface TokenFileEnv {
  XDG_RUNTIME_DIR?: string;
  HOME?: string;
}

/**
 * Where a ferry whose API listens on `port` keeps a generated token:
 * `$XDG_RUNTIME_DIR/ferry/api-<port>.token`, else
 * `$HOME/.local/state/ferry/api-<port>.token`; undefined when neither is set
 * (to an absolute path).
 */
export function defaultTokenFile(port: number, env: TokenFileEnv): string | undefined {
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime?.startsWith("/")) return `${runtime.replace(/\/+$/, "")}/ferry/api-${port}.token`;
  const home = env.HOME;
  if (home?.startsWith("/")) {
    return `${home.replace(/\/+$/, "")}/.local/state/ferry/api-${port}.token`;
  }
  return undefined;
}

function reason(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Makes ferry's own token directory owner-only, refusing one that belongs to someone else. */
function ensurePrivateDir(dir: string): void {
  const info = Deno.lstatSync(dir);
  if (!info.isDirectory) throw new TokenFileError(`${dir} is not a directory`);
  const uid = Deno.uid();
  if (uid !== null && info.uid !== uid) {
    throw new TokenFileError(`${dir} belongs to another user (uid ${info.uid})`);
  }
  if (info.mode !== null && (info.mode & 0o077) !== 0) Deno.chmodSync(dir, 0o700);
}

/**
 * Writes `token` to the absolute `path`, readable and writable by this user only
 * (0600). Missing directories are created 0700; with `privateDir` (ferry's own
 * default directory) an existing one is made 0700 too, and refused if another user
 * owns it. The file is created new under a random name beside `path` and renamed
 * over it, so a file or link planted at `path` is replaced, never written through.
 */
export function writeTokenFile(path: string, token: string, opts: { privateDir?: boolean } = {}) {
  if (!path.startsWith("/")) throw new TokenFileError(`${path} is not an absolute path`);
  const slash = path.lastIndexOf("/");
  const dir = path.slice(0, slash) || "/";
  const name = path.slice(slash + 1);
  if (name === "") throw new TokenFileError(`${path} names a directory, not a file`);
  let temp: string | undefined;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (opts.privateDir) ensurePrivateDir(dir);
    const suffix = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16))
      .join("");
    temp = `${dir}/.${name}.${suffix}`;
    Deno.writeTextFileSync(temp, `${token}\n`, { createNew: true, mode: 0o600 });
    Deno.chmodSync(temp, 0o600);
    Deno.renameSync(temp, path);
    temp = undefined;
  } catch (e) {
    if (e instanceof TokenFileError) throw e;
    throw new TokenFileError(`cannot write ${path}: ${reason(e)}`, { cause: e });
  } finally {
    if (temp !== undefined) {
      try {
        Deno.removeSync(temp);
      } catch {
        // Never created, or already gone.
      }
    }
  }
}

/** The token in the file at `path`, or undefined when there is no such file. */
export function readTokenFile(path: string): string | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new TokenFileError(`cannot read ${path}: ${reason(e)}`, { cause: e });
  }
  const token = text.trim();
  return token === "" ? undefined : token;
}

/**
 * Removes the token file at `path` if it still holds `token` (a newer ferry on the
 * same port may have replaced it). Best effort: a clean shutdown never fails here.
 */
export function removeTokenFile(path: string, token: string): void {
  try {
    if (readTokenFile(path) === token) Deno.removeSync(path);
  } catch {
    // Already gone or unreadable: nothing to clean up.
  }
}
