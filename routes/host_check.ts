import type { MiddlewareHandler } from "hono";
import { ApiError } from "./router.ts";

/** Which host names the API answers to, besides the loopback ones. */
export interface HostCheckOptions {
  /** The host the API listens on (`--listen`); a wildcard adds every local address. */
  readonly listen: string;
  /** More names or addresses the API may be reached by (`--allowed-host`, repeatable). */
  readonly allowed?: readonly string[];
  /** This machine's interface addresses; read on a miss, when `listen` is a wildcard. */
  readonly interfaces?: () => readonly string[];
}

const HOST_SYNTAX = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::\d{1,5})?$/;

/**
 * The host name in a `Host` header value (`name`, `name:port`, `[v6]:port`) in one
 * canonical form: lower case, no brackets, no port, no trailing dot, IPv4 and IPv6
 * addresses as the URL parser writes them. Undefined for anything else.
 */
export function canonicalHost(text: string): string | undefined {
  const m = HOST_SYNTAX.exec(text);
  if (!m) return undefined;
  let name: string;
  try {
    name = new URL(`http://${m[1]}/`).hostname;
  } catch {
    return undefined;
  }
  if (name.startsWith("[")) name = name.slice(1, -1);
  if (name.endsWith(".")) name = name.slice(0, -1);
  return name || undefined;
}

/** An address or name as given on the command line or by the OS, in canonicalHost's form. */
function canonicalName(text: string): string | undefined {
  const bare = text.replace(/%.*$/, ""); // an IPv6 zone (fe80::1%eth0) is not part of a Host
  return canonicalHost(bare.includes(":") && !bare.startsWith("[") ? `[${bare}]` : bare);
}

/** True for names only this machine can reach: localhost, *.localhost, 127.0.0.0/8, ::1. */
export function isLoopbackHost(text: string): boolean {
  const name = canonicalName(text);
  if (name === undefined) return false;
  return name === "localhost" || name.endsWith(".localhost") || name === "::1" ||
    /^127\.\d+\.\d+\.\d+$/.test(name);
}

/** True for the addresses that listen on every interface. */
export function isWildcardHost(text: string): boolean {
  const name = canonicalName(text);
  return name === "0.0.0.0" || name === "::";
}

/** The interface addresses Deno reports; none without the `sys` permission. */
function localAddresses(): string[] {
  try {
    return Deno.networkInterfaces().map((i) => i.address);
  } catch {
    return [];
  }
}

/**
 * Refuses (403 `host-not-allowed`) a request whose `Host` names neither a loopback
 * name, the listen address, a local address (when listening on a wildcard) nor an
 * `--allowed-host`: a web page that rebinds its own name to 127.0.0.1 (DNS
 * rebinding) still sends its own name, so it cannot read the API. Runs first.
 */
export function hostCheck(opts: HostCheckOptions): MiddlewareHandler {
  const fixed = new Set<string>();
  for (const name of [opts.listen, ...(opts.allowed ?? [])]) {
    const canonical = canonicalName(name);
    if (canonical !== undefined) fixed.add(canonical);
  }
  const wildcard = isWildcardHost(opts.listen);
  const interfaces = opts.interfaces ?? localAddresses;
  const allowed = (name: string) =>
    isLoopbackHost(name) || fixed.has(name) ||
    (wildcard && interfaces().some((a) => canonicalName(a) === name));
  return async (c, next) => {
    // A request without Host (HTTP/1.0, in-process) has the URL's host, which Deno
    // fills from the listening address.
    const text = c.req.header("host") ?? new URL(c.req.url).host;
    const name = canonicalHost(text);
    if (name === undefined || !allowed(name)) {
      const shown = text.length > 100 ? `${text.slice(0, 100)}…` : text;
      throw new ApiError(
        403,
        "host-not-allowed",
        name === undefined
          ? `Host "${shown}" is not a host name`
          : `This ferry does not answer to host "${name}" (a web page may be rebinding its ` +
            `name to this machine); if "${name}" is a name of this machine, start ferry with ` +
            `--allowed-host ${name}`,
      );
    }
    await next();
  };
}
