import { parseArgs } from "node:util";
import { PAGE_SIZE, parseSize } from "./vm/ram.ts";
import { parseWorkload, type WorkloadSpec } from "./vm/workload.ts";
import { FILL_MODES, type FillMode, isFillMode } from "./vm/fill.ts";
import { MIN_TOKEN_LENGTH } from "./api_token.ts";
import { canonicalHost } from "./routes/host_check.ts";
import {
  type Parameters,
  ParametersPatchSchema,
  type SecurityParameter,
} from "./engine/contract.ts";

/** A bad command line; main prints the message on one line and exits 2. */
export class CliError extends Error {
  override readonly name = "CliError";
}

/** Everything main.ts needs from the command line. */
export interface Config {
  hostname: string;
  port: number;
  ramSize: number;
  workload: WorkloadSpec;
  fill: FillMode;
  /** A RAM image to load instead of a fill (`--fill image:PATH`). */
  image?: string;
  incoming: string | undefined;
  autostart: boolean;
  paused: boolean;
  allowExec: boolean;
  prefault: boolean;
  /** The token given with --token or FERRY_TOKEN; undefined: ferry generates one. */
  token: string | undefined;
  /** Where a generated token goes (--token-file); undefined: the default place. */
  tokenFile: string | undefined;
  /** More host names the API answers to (--allowed-host, repeatable). */
  allowedHosts: string[];
  help: boolean;
  /** Raw disk image path (--disk). */
  disk?: string;
  /** Size to create the image at when absent (--disk-size). */
  diskSize?: number;
  /** Which guest runs (--guest). */
  guest: "synthetic" | "x86";
  /**
   * Who this ferry migrates with (--peer): other ferries, or QEMU (the qemu profile:
   * it holds a QEMU guest's RAM and device state, see engine/qemu_profile.ts).
   */
  peer: "ferry" | "qemu";
  /** The x86 guest's images and command line; unset fields take the built image's. */
  x86: { kernel?: string; initrd?: string; bios?: string; append?: string };
  /**
   * The migration channel's security parameters the flags set (absolute paths):
   * the engine starts with them, and the API can change them.
   */
  security: Partial<Record<SecurityParameter, string>>;
  /** Lets a destination listen in plaintext on a non-loopback tcp: address. */
  insecureMigration: boolean;
  /** Where past migrations and their timelines are kept across restarts (--state-dir). */
  stateDir?: string;
  /**
   * Parameters the engine starts with (--param NAME=VALUE, repeatable): what must be set
   * before --incoming arms, such as compress_method or multifd_channels.
   */
  parameters: Partial<Parameters>;
}

/**
 * The --param flags as one PATCH /migrations/parameters body, validated by its schema:
 * digits are numbers, true and false booleans, anything else a string.
 */
function parseParams(items: string[]): Partial<Parameters> {
  const body: Record<string, unknown> = {};
  for (const item of items) {
    const eq = item.indexOf("=");
    if (eq <= 0) {
      throw new CliError(
        `Invalid --param "${item}": expected NAME=VALUE, e.g. --param compress_method=zstd`,
      );
    }
    const text = item.slice(eq + 1);
    body[item.slice(0, eq)] = /^-?\d+$/.test(text)
      ? Number(text)
      : text === "true" || text === "false"
      ? text === "true"
      : text;
  }
  const parsed = ParametersPatchSchema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const name = issue.path.length > 0
      ? String(issue.path[0])
      : String((issue as { keys?: string[] }).keys?.[0] ?? "");
    const shown = name in body ? `${name}=${JSON.stringify(body[name])}` : name;
    throw new CliError(`Invalid --param ${shown}: ${issue.message}`);
  }
  return parsed.data;
}

/** Each security flag and the parameter it sets. */
const SECURITY_FLAGS = {
  "tls-cert": "tls_cert",
  "tls-key": "tls_key",
  "tls-ca": "tls_ca",
  "tls-hostname": "tls_hostname",
  "migration-secret": "migration_secret",
  "snapshot-key": "snapshot_key",
} as const satisfies Record<string, SecurityParameter>;

/** The --help text: every flag, its default, and an example. */
export const HELP = `ferry — live migration of a running guest between two ferry services

Usage: deno task start [flags]

Flags:
  --listen HOST:PORT    API address (default 127.0.0.1:8080; port 0 picks a free port)
  --guest KIND          synthetic (default): ferry's own vCPU running --workload;
                        x86: a PC running Linux under v86, with a serial console
  --ram SIZE            guest RAM, e.g. 256M, 1G (default 256M; K/M/G/T are binary units;
                        x86: whole MiB from 64M to 2047M)
  --workload SPEC       what the guest's vCPU does (default idle):
                          idle
                          ab[:rate=SIZE][,range=SIZE]    QEMU's a-b test guest
                          random[:rate=50M][,hot=10%:90%][,bytes=8][,disk=5M]
                        rate = bytes of pages dirtied per second (0 = as fast as possible)
                        disk = bytes/s of 4 KiB writes at random offsets of the disk
  --fill MODE           prepare RAM before start: zero, random or pattern (default zero),
                        or image:PATH to load a RAM image of exactly --ram bytes
                        (deno task bench:image makes one from a real Linux guest)
  --kernel PATH         x86: the bzImage to boot (default: the image deno task guest:image
                        builds in .cache/guest/)
  --initrd PATH         x86: its initrd (default: the built image's)
  --append TEXT         x86: the kernel command line (default: serial console, quiet)
  --bios PATH           x86: SeaBIOS bios.bin (default: the built image's); both ends
                        of a migration need the same one
  --disk PATH           attach a raw disk image (block migration copies it with blk/inc)
  --disk-size SIZE      create the image at SIZE when absent (multiple of 1M, e.g. 1G)
  --peer ferry|qemu     who this ferry migrates with (default ferry). qemu: it loads and
                        sends QEMU 7.2 streams (machine pc, pc.ram of --ram = QEMU's -m),
                        holding the guest's RAM and device sections without running it:
                        to inspect or store a QEMU migration, or relay it to a QEMU
  --incoming URI        start as a destination waiting on URI: tcp:HOST:PORT, unix:/PATH,
                        exec:COMMAND (needs --allow-exec), fd:N, file:/PATH[,offset=N]
  --no-autostart        a destination stays paused after loading (QEMU's -S)
  --paused              a source guest starts paused instead of running (an x86 guest:
                        not booted until POST /vm/start)
  --no-prefault         do not fault guest RAM in at start (default: prefault, like -mem-prealloc)
  --allow-exec          allow exec: migration URIs (they run shell commands)
  --tls-cert PATH       TLS on tcp: migrations: the PEM certificate a destination presents
  --tls-key PATH        its PEM private key
  --tls-ca PATH         the PEM CA a source checks the destination's certificate against
  --tls-hostname NAME   the name the destination's certificate must carry (default: the
                        URI's host). Any --tls-* flag turns TLS on for tcp: both ways;
                        each sets the parameter of the same name (tls_cert, …)
  --migration-secret PATH
                        a file both ends hold (16 bytes or more, e.g. head -c 32
                        /dev/urandom): on tcp: and unix: each end proves it has it
                        before any page moves
  --snapshot-key PATH   a 32-byte key file (openssl rand -hex 32): file:, exec: and fd:
                        streams are encrypted with it, and restoring one needs it
  --insecure-migration  let --incoming / POST /migrations/incoming listen in plaintext
                        on a tcp: address that is not loopback (default: refused
                        without TLS)
  --param NAME=VALUE    a migration parameter to start with, as PATCH /migrations/parameters
                        sets it (repeatable), e.g. --param compress_method=zstd: what a
                        destination armed by --incoming must already have
  --state-dir DIR       keep the history of past migrations (GET /migrations) and the
                        timelines of the last ones in DIR, so they survive a restart
                        (default: in memory only)
  --token TOKEN         the API token (at least 16 characters; prefer FERRY_TOKEN, which
                        other users cannot see in ps). Without one ferry generates a random
                        token and writes it to a file only you can read (see --token-file).
                        Every request but GET / (the dashboard page) needs
                        "Authorization: Bearer TOKEN".
  --token-file PATH     where a generated token goes (absolute path; default
                        $XDG_RUNTIME_DIR/ferry/api-PORT.token, else
                        $HOME/.local/state/ferry/api-PORT.token; removed at exit)
  --allowed-host NAME   also answer requests for host NAME (repeatable); by default only
                        loopback names, the --listen host and, on 0.0.0.0 or ::, this
                        machine's addresses (against DNS rebinding)
  -h, --help            show this help

Example:
  deno task start --listen 127.0.0.1:0 --ram 512M --workload random:rate=20M --fill random
  deno task start --incoming tcp:0.0.0.0:4444 --tls-cert dst.pem --tls-key dst.key \\
    --migration-secret migration.secret     # a TLS destination (see README, "TLS")
  deno task start --guest x86 --ram 256M   # boots Linux; console at GET /vm/console
  deno task token          # prints the token of the ferry on 127.0.0.1:8080
`;

function parseListen(text: string): { hostname: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  if (!m) throw new CliError(`Invalid --listen "${text}": expected HOST:PORT, e.g. 127.0.0.1:8080`);
  const port = Number(m[2]);
  if (port > 65535) throw new CliError(`Invalid --listen "${text}": port ${port} is above 65535`);
  const hostname = m[1].startsWith("[") ? m[1].slice(1, -1) : m[1];
  return { hostname, port };
}

/**
 * Parses ferry's flags; throws CliError with a one-line message for anything wrong.
 * Relative file paths of the security flags are taken from `env.cwd` (default the
 * process's working directory).
 */
export function parseFlags(
  args: string[],
  env: { FERRY_TOKEN?: string; cwd?: string } = {},
): Config {
  let values;
  try {
    ({ values } = parseArgs({
      // `deno task start -- --flag` passes the "--" through.
      args: args[0] === "--" ? args.slice(1) : args,
      strict: true,
      allowPositionals: false,
      options: {
        listen: { type: "string", default: "127.0.0.1:8080" },
        guest: { type: "string", default: "synthetic" },
        peer: { type: "string", default: "ferry" },
        kernel: { type: "string" },
        initrd: { type: "string" },
        append: { type: "string" },
        bios: { type: "string" },
        ram: { type: "string", default: "256M" },
        workload: { type: "string", default: "idle" },
        fill: { type: "string", default: "zero" },
        incoming: { type: "string" },
        disk: { type: "string" },
        "disk-size": { type: "string" },
        "no-autostart": { type: "boolean", default: false },
        paused: { type: "boolean", default: false },
        "no-prefault": { type: "boolean", default: false },
        "allow-exec": { type: "boolean", default: false },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "tls-ca": { type: "string" },
        "tls-hostname": { type: "string" },
        "migration-secret": { type: "string" },
        "snapshot-key": { type: "string" },
        "insecure-migration": { type: "boolean", default: false },
        "state-dir": { type: "string" },
        param: { type: "string", multiple: true, default: [] },
        token: { type: "string" },
        "token-file": { type: "string" },
        "allowed-host": { type: "string", multiple: true, default: [] },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    throw new CliError(`${(e as Error).message.split("\n")[0]} (see --help)`);
  }
  const { hostname, port } = parseListen(values.listen);
  let ramSize: number;
  try {
    ramSize = parseSize(values.ram);
  } catch (e) {
    throw new CliError(`Invalid --ram: ${(e as Error).message}`);
  }
  if (ramSize < PAGE_SIZE || ramSize % PAGE_SIZE !== 0) {
    throw new CliError(
      `Invalid --ram "${values.ram}": must be a positive multiple of ${PAGE_SIZE} bytes`,
    );
  }
  if (ramSize > 64 * 2 ** 30) throw new CliError(`Invalid --ram "${values.ram}": at most 64G`);
  let workload: WorkloadSpec;
  try {
    workload = parseWorkload(values.workload);
  } catch (e) {
    throw new CliError(`Invalid --workload: ${(e as Error).message}`);
  }
  let image: string | undefined;
  if (values.fill.startsWith("image:")) {
    image = values.fill.slice("image:".length);
    if (image === "") throw new CliError("Invalid --fill image: empty path");
    values.fill = "zero";
  } else if (!isFillMode(values.fill)) {
    throw new CliError(
      `Invalid --fill "${values.fill}": expected one of ${FILL_MODES.join(", ")} or image:PATH`,
    );
  }
  let diskSize: number | undefined;
  if (values["disk-size"] !== undefined) {
    if (values.disk === undefined) throw new CliError("--disk-size needs --disk PATH");
    try {
      diskSize = parseSize(values["disk-size"]);
    } catch (e) {
      throw new CliError(`Invalid --disk-size: ${(e as Error).message}`);
    }
    if (diskSize <= 0 || diskSize % (1 << 20) !== 0) {
      throw new CliError(
        `Invalid --disk-size "${values["disk-size"]}": must be a positive multiple of 1M`,
      );
    }
  }
  if (values.disk === "") throw new CliError("Invalid --disk: empty path");
  if (workload.kind === "random" && workload.disk && values.disk === undefined) {
    throw new CliError("Invalid --workload: disk=RATE needs --disk PATH");
  }
  const guest = values.guest;
  if (guest !== "synthetic" && guest !== "x86") {
    throw new CliError(`Invalid --guest "${guest}": expected synthetic or x86`);
  }
  const x86: Config["x86"] = {};
  for (const name of ["kernel", "initrd", "bios", "append"] as const) {
    const value = values[name];
    if (value === undefined) continue;
    if (guest !== "x86") throw new CliError(`--${name} is for the x86 guest: add --guest x86`);
    if (value === "" && name !== "append") throw new CliError(`Invalid --${name}: empty path`);
    x86[name] = value;
  }
  if (guest === "x86") {
    if (values.workload !== "idle") {
      throw new CliError("--workload drives the synthetic guest; the x86 guest runs Linux");
    }
    if (values.fill !== "zero" || image !== undefined) {
      throw new CliError("--fill prepares the synthetic guest's RAM; the x86 guest boots Linux");
    }
    if (ramSize % (1 << 20) !== 0 || ramSize < 64 << 20 || ramSize > 2047 << 20) {
      throw new CliError(
        `Invalid --ram "${values.ram}" for the x86 guest: whole MiB from 64M to 2047M`,
      );
    }
    if (values.disk !== undefined) {
      throw new CliError("--disk is for the synthetic guest (the x86 guest has no disk yet)");
    }
  }
  const peer = values.peer;
  if (peer !== "ferry" && peer !== "qemu") {
    throw new CliError(`Invalid --peer "${peer}": expected ferry or qemu`);
  }
  if (peer === "qemu") {
    if (guest !== "synthetic") {
      throw new CliError("--peer qemu holds a QEMU guest: drop --guest x86");
    }
    if (values.workload !== "idle" || image !== undefined || values.disk !== undefined) {
      throw new CliError(
        "--peer qemu holds a QEMU guest that ferry does not run: drop --workload, " +
          "--fill image: and --disk",
      );
    }
  }
  const token = values.token ?? (env.FERRY_TOKEN || undefined);
  // RFC 6750's token68 characters: any other token could never be sent in a header.
  // (The message never repeats the token.)
  if (token !== undefined && !/^[A-Za-z0-9._~+/-]+=*$/.test(token)) {
    throw new CliError(
      "Invalid --token/FERRY_TOKEN: use only letters, digits and . _ ~ + / - (then = padding)",
    );
  }
  if (token !== undefined && token.length < MIN_TOKEN_LENGTH) {
    throw new CliError(
      `Invalid --token/FERRY_TOKEN: a token needs at least ${MIN_TOKEN_LENGTH} characters ` +
        `(this one has ${token.length}); give none and ferry generates a strong one`,
    );
  }
  const tokenFile = values["token-file"];
  if (tokenFile !== undefined) {
    if (token !== undefined) {
      throw new CliError(
        "--token-file is where ferry writes the token it generates: drop it, or drop --token/FERRY_TOKEN",
      );
    }
    if (!tokenFile.startsWith("/") || tokenFile.endsWith("/")) {
      throw new CliError(`Invalid --token-file "${tokenFile}": expected an absolute file path`);
    }
  }
  const allowedHosts = values["allowed-host"];
  for (const name of allowedHosts) {
    const bare = name.includes(":") && !name.startsWith("[") ? `[${name}]` : name;
    if (canonicalHost(bare) === undefined) {
      throw new CliError(
        `Invalid --allowed-host "${name}": expected a host name or address, e.g. ferry.lan`,
      );
    }
  }
  const security: Config["security"] = {};
  for (const [flag, param] of Object.entries(SECURITY_FLAGS)) {
    const value = values[flag as keyof typeof SECURITY_FLAGS];
    if (value === undefined) continue;
    if (value === "") throw new CliError(`Invalid --${flag}: empty`);
    if (param === "tls_hostname") {
      if (!/^[A-Za-z0-9._:-]{1,253}$/.test(value)) {
        throw new CliError(`Invalid --${flag} "${value}": expected a host name or IP address`);
      }
      security[param] = value;
    } else {
      security[param] = value.startsWith("/")
        ? value
        : `${(env.cwd ?? Deno.cwd()).replace(/\/$/, "")}/${value}`;
    }
  }
  if ((security.tls_cert === undefined) !== (security.tls_key === undefined)) {
    throw new CliError(
      "--tls-cert and --tls-key go together: a TLS destination presents a certificate and " +
        "needs its key",
    );
  }
  const stateDir = values["state-dir"];
  if (stateDir === "") throw new CliError("Invalid --state-dir: empty path");
  const parameters = parseParams(values.param);
  return {
    parameters,
    ...(stateDir !== undefined
      ? {
        stateDir: stateDir.startsWith("/")
          ? stateDir
          : `${(env.cwd ?? Deno.cwd()).replace(/\/$/, "")}/${stateDir}`,
      }
      : {}),
    hostname,
    port,
    ramSize,
    workload,
    fill: values.fill as FillMode,
    ...(image !== undefined ? { image } : {}),
    incoming: values.incoming,
    autostart: !values["no-autostart"],
    paused: values.paused,
    allowExec: values["allow-exec"],
    prefault: !values["no-prefault"],
    token,
    tokenFile,
    allowedHosts,
    help: values.help,
    security,
    insecureMigration: values["insecure-migration"],
    guest,
    peer,
    x86,
    ...(values.disk !== undefined ? { disk: values.disk } : {}),
    ...(diskSize !== undefined ? { diskSize } : {}),
  };
}
