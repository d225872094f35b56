import { TransportError } from "./transport.ts";

/** A parsed migration URI, one variant per scheme QEMU accepts (plus file:). */
export type MigrationUri =
  | { readonly scheme: "tcp"; readonly host: string; readonly port: number }
  | { readonly scheme: "unix"; readonly path: string }
  | { readonly scheme: "exec"; readonly command: string }
  | { readonly scheme: "fd"; readonly fd: number }
  | { readonly scheme: "file"; readonly path: string; readonly offset: number };

/** The schemes ferry knows, in the order the API documents them. */
export const SCHEMES = ["tcp", "unix", "exec", "fd", "file"] as const;

/** One of the schemes in {@link SCHEMES}. */
export type Scheme = typeof SCHEMES[number];

/**
 * What a URI is parsed for: `connect` (an outgoing migration) or `listen` (an
 * incoming one). Some URIs are only valid one way: tcp: port 0 picks a free port
 * when listening but names no peer to connect to.
 */
export type UriDirection = "connect" | "listen";

/** Longest socket path the kernel accepts: `sun_path` is 108 bytes including the NUL. */
export const MAX_UNIX_PATH_BYTES = 107;

function bad(uri: string, why: string): TransportError {
  return new TransportError("bad-uri", `Invalid migration URI "${uri}": ${why}`);
}

function parsePort(uri: string, text: string): number {
  if (!/^\d{1,5}$/.test(text)) throw bad(uri, `port "${text}" is not a number`);
  const port = Number(text);
  if (port > 65535) throw bad(uri, `port ${port} is above 65535`);
  return port;
}

function parseTcp(uri: string, rest: string, direction?: UriDirection): MigrationUri {
  let host: string;
  let portText: string;
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0 || rest[close + 1] !== ":") throw bad(uri, "expected [IPv6]:PORT");
    host = rest.slice(1, close);
    portText = rest.slice(close + 2);
  } else {
    const colon = rest.lastIndexOf(":");
    if (colon < 0) throw bad(uri, "expected HOST:PORT");
    host = rest.slice(0, colon);
    portText = rest.slice(colon + 1);
    if (host.includes(":")) throw bad(uri, "an IPv6 address must be written in brackets");
  }
  if (host === "") throw bad(uri, "host is empty");
  if (!/^[A-Za-z0-9._:%-]+$/.test(host)) throw bad(uri, `host "${host}" has invalid characters`);
  const port = parsePort(uri, portText);
  if (port === 0 && direction === "connect") {
    throw bad(
      uri,
      'port 0 only means "any free port" when listening: give the destination\'s port',
    );
  }
  return { scheme: "tcp", host, port };
}

function parseUnix(uri: string, path: string): MigrationUri {
  if (path === "") throw bad(uri, "path is empty");
  // Absolute like file: paths, so a URI means the same socket whatever ferry's working directory.
  if (!path.startsWith("/")) throw bad(uri, `path "${path}" must be absolute`);
  const bytes = new TextEncoder().encode(path).length;
  if (bytes > MAX_UNIX_PATH_BYTES) {
    throw bad(
      uri,
      `path is ${bytes} bytes, longer than the ${MAX_UNIX_PATH_BYTES} a unix socket allows`,
    );
  }
  return { scheme: "unix", path };
}

function parseFile(uri: string, rest: string): MigrationUri {
  let path = rest;
  let offset = 0;
  const m = /^(.*),offset=(.*)$/.exec(rest);
  if (m) {
    path = m[1];
    const text = m[2];
    const parsed = /^(0x[0-9a-fA-F]+|\d+)$/.test(text) ? Number(text) : NaN;
    if (!Number.isSafeInteger(parsed)) throw bad(uri, `offset "${text}" is not a whole number`);
    offset = parsed;
  }
  if (path === "") throw bad(uri, "path is empty");
  if (!path.startsWith("/")) throw bad(uri, `path "${path}" must be absolute`);
  return { scheme: "file", path, offset };
}

/**
 * Parses a migration URI (`tcp:HOST:PORT`, `unix:/PATH`, `exec:CMD`, `fd:N`,
 * `file:/PATH[,offset=N]`). Throws a TransportError with code `bad-uri` for a
 * malformed URI of a known scheme and `unknown-protocol` for any other scheme.
 * With a `direction`, a URI only valid the other way is `bad-uri` too (tcp: port 0
 * to connect); without one, either way is accepted.
 */
export function parseUri(uri: string, direction?: UriDirection): MigrationUri {
  const colon = uri.indexOf(":");
  if (colon <= 0) {
    throw new TransportError(
      "unknown-protocol",
      `Unknown migration protocol in "${uri}": expected one of ${SCHEMES.join(":, ")}:`,
    );
  }
  const scheme = uri.slice(0, colon);
  const rest = uri.slice(colon + 1);
  switch (scheme) {
    case "tcp":
      return parseTcp(uri, rest, direction);
    case "unix":
      return parseUnix(uri, rest);
    case "exec":
      if (rest.trim() === "") throw bad(uri, "command is empty");
      return { scheme: "exec", command: rest };
    case "fd": {
      if (!/^\d{1,9}$/.test(rest)) throw bad(uri, `"${rest}" is not a file descriptor number`);
      return { scheme: "fd", fd: Number(rest) };
    }
    case "file":
      return parseFile(uri, rest);
    default:
      throw new TransportError(
        "unknown-protocol",
        `Unknown migration protocol "${scheme}:": expected one of ${SCHEMES.join(":, ")}:`,
      );
  }
}

/** Writes a parsed URI back in its canonical text form. */
export function formatUri(uri: MigrationUri): string {
  switch (uri.scheme) {
    case "tcp":
      return uri.host.includes(":")
        ? `tcp:[${uri.host}]:${uri.port}`
        : `tcp:${uri.host}:${uri.port}`;
    case "unix":
      return `unix:${uri.path}`;
    case "exec":
      return `exec:${uri.command}`;
    case "fd":
      return `fd:${uri.fd}`;
    case "file":
      return uri.offset ? `file:${uri.path},offset=${uri.offset}` : `file:${uri.path}`;
  }
}

/**
 * True for a tcp: host only this machine can reach: 127.0.0.0/8, ::1 and
 * `localhost`. Anything else, 0.0.0.0 and :: included, may be reachable from a
 * network.
 */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return m !== null && m.slice(1).every((o) => Number(o) <= 255);
}
