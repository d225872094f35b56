/**
 * The API's data, as zod schemas: the one source of truth for migration and
 * incoming info, capabilities, parameters (with their ranges) and the guest's
 * info. The engine's types are inferred from them; routes/ validates requests and
 * answers with them, and /openapi.json documents them (QEMU's qapi/migration.json
 * plays this part for QEMU).
 * @module
 */
import { z } from "@hono/zod-openapi";
import { RUN_STATES } from "../vm/guest.ts";
import { COMPRESS_METHODS } from "./format/compression.ts";

/**
 * Outgoing migration states, QEMU's names (its ERROR is reported as "failed").
 * With `pause_before_switchover`, the guest stopped, a migration waits in
 * `pre-switchover` until continued, then sends the rest in `device`.
 */
export const MIGRATION_STATES = [
  "none",
  "setup",
  "active",
  "interrupted",
  "pre-switchover",
  "device",
  "cancelling",
  "cancelled",
  "completed",
  "failed",
] as const;

/** States of the incoming side. */
export const INCOMING_STATES = [
  "none",
  "listening",
  "active",
  "interrupted",
  "completed",
  "failed",
  "cancelled",
] as const;

/** What a stalled migration does (the `stall_action` parameter). */
export const STALL_ACTIONS = ["fail", "switchover", "throttle"] as const;

/** What a migration past its completion deadline does (the `on_timeout` parameter). */
export const TIMEOUT_ACTIONS = ["cancel", "switchover", "throttle"] as const;

/**
 * The range of every numeric parameter: the one table the API schema and the
 * engine's checks use. `xbzrle_cache_size` is further bounded by the guest's RAM.
 */
export const PARAMETER_LIMITS = {
  max_bandwidth: [1, Number.MAX_SAFE_INTEGER],
  downtime_limit: [1, 2_000_000],
  xbzrle_cache_size: [4096, 64 * 2 ** 30],
  cpu_throttle_initial: [1, 99],
  cpu_throttle_increment: [1, 99],
  progress_timeout: [10, 86_400_000],
  stall_windows: [0, 10_000_000],
  incoming_page_budget: [2, 1_000_000],
  compress_level: [1, 19],
  resume_grace: [0, 86_400_000],
  multifd_channels: [1, 16],
  completion_timeout_ms: [0, 86_400_000],
  completion_timeout_per_gib: [0, 86_400],
} as const satisfies Record<string, readonly [number, number]>;

/** The numeric parameters. */
export type NumericParameter = keyof typeof PARAMETER_LIMITS;

/** Longest file path a security parameter takes, bytes of text. */
export const MAX_PATH_CHARS = 4096;

/** A file parameter: an absolute path, or "" for none (QEMU's `tls-creds: ""`). */
function filePath(what: string) {
  return z.string().max(MAX_PATH_CHARS).refine(
    (v) => v === "" || (v.startsWith("/") && !v.includes("\0")),
    { message: `${what} must be an absolute file path, or "" for none` },
  );
}

/**
 * The migration channel's security (docs/ARCHITECTURE.md, "Transport security"):
 * file paths and a name, "" when unset. Each is read when a migration starts or
 * an incoming one is armed. These schemas check a value in a PATCH and in
 * validateParameters alike.
 */
export const SECURITY_PARAMETER_SCHEMAS = {
  tls_cert: filePath("tls_cert").openapi({
    description: "PEM certificate (chain) a destination presents on tcp:. Setting any tls_* " +
      'parameter turns TLS on for tcp: in both directions; "" for none',
    example: "/etc/ferry/dst.pem",
  }),
  tls_key: filePath("tls_key").openapi({
    description: "PEM private key of tls_cert",
    example: "/etc/ferry/dst.key",
  }),
  tls_ca: filePath("tls_ca").openapi({
    description: "PEM CA certificate a source checks the destination's certificate against " +
      "(in addition to Deno's built-in roots)",
    example: "/etc/ferry/ca.pem",
  }),
  tls_hostname: z.string().max(253).regex(/^$|^[A-Za-z0-9._:-]+$/, {
    message: 'tls_hostname must be a host name or IP address, or "" for the URI\'s host',
  }).openapi({
    description: 'The name the destination\'s certificate must carry (default "": the ' +
      "host of the migration URI)",
    example: "ferry-dst.example",
  }),
  migration_secret: filePath("migration_secret").openapi({
    description: "A file both ends hold (16 bytes to 64 KiB): on tcp: and unix: each proves " +
      "it has it before any page moves (HMAC-SHA-256 challenge and response)",
    example: "/etc/ferry/migration.secret",
  }),
  snapshot_key: filePath("snapshot_key").openapi({
    description: "A 32-byte key file (raw, hex or base64): file:, exec: and fd: streams are " +
      "encrypted and authenticated with it (AES-256-GCM in 1 MiB chunks), and a restore " +
      "needs it",
    example: "/etc/ferry/snapshot.key",
  }),
} as const;

/** The security parameters (file paths and a name). */
export type SecurityParameter = keyof typeof SECURITY_PARAMETER_SCHEMAS;

export const RamInfoSchema = z.object({
  transferred: z.number(),
  remaining: z.number(),
  total: z.number(),
  duplicate: z.number(),
  skipped: z.number(),
  normal: z.number(),
  normal_bytes: z.number(),
  dirty_pages_rate: z.number(),
  mbps: z.number(),
  dirty_sync_count: z.number(),
  pages_per_second: z.number(),
  page_size: z.number(),
}).openapi("RamInfo");

/** What resuming an interrupted pre-copy did, on either side. */
export const ResumeInfoSchema = z.object({
  interruptions: z.number().openapi({ description: "Times the channel failed during pre-copy" }),
  resumes: z.number().openapi({ description: "Times the migration carried on over a new channel" }),
  grace_left: z.number().optional().openapi({
    description: "While interrupted: ms left before the migration fails (resume_grace)",
  }),
  last_error: z.string().optional().openapi({ description: "What interrupted it last" }),
  pages_held: z.number().openapi({
    description: "At the last resume: pages the destination held as the source last sent them",
  }),
  pages_resent: z.number().openapi({
    description: "At the last resume: pages the destination lacked or held stale, sent again",
  }),
  bytes_saved: z.number().openapi({
    description: "Bytes of pages not sent again thanks to resuming, over all resumes",
  }),
  bytes_after_resume: z.number().optional().openapi({
    description: "Source: stream bytes written since the last resume",
  }),
}).openapi("ResumeInfo");

/** GET /migrations/current (QEMU's query-migrate). */
export const MigrationInfoSchema = z.object({
  id: z.string().optional().openapi({
    description: "The migration's id: GET /migrations/{id} and its timeline",
  }),
  status: z.enum(MIGRATION_STATES),
  uri: z.string().optional(),
  total_time: z.number().optional().openapi({ description: "ms since the migration started" }),
  setup_time: z.number().optional(),
  expected_downtime: z.number().optional(),
  downtime: z.number().optional(),
  error_desc: z.string().optional(),
  ram: RamInfoSchema.optional(),
  disk: z.object({
    transferred: z.number(),
    remaining: z.number(),
    total: z.number(),
  }).optional().openapi({ description: "With blk/inc: bytes of the disk image" }),
  xbzrle_cache: z.object({
    cache_size: z.number(),
    bytes: z.number(),
    pages: z.number(),
    cache_miss: z.number(),
    cache_miss_rate: z.number(),
    overflow: z.number(),
  }).optional().openapi({ description: "With the xbzrle capability" }),
  compression: z.object({
    method: z.enum(COMPRESS_METHODS),
    pages: z.number().openapi({ description: "Pages sent in compressed runs" }),
    raw_bytes: z.number(),
    bytes: z.number().openapi({ description: "Wire bytes of the compressed runs" }),
    incompressible: z.number().openapi({ description: "Runs sent plainly: they did not shrink" }),
    skipped_windows: z.number().openapi({
      description: "100 ms windows without compression: the link was faster than the compressor",
    }),
    active: z.boolean().openapi({ description: "The current window compresses" }),
  }).optional().openapi({ description: "With compress_method zstd or lz4" }),
  page_refs: z.object({
    pages: z.number().openapi({ description: "Pages sent as same-page references" }),
  }).optional().openapi({ description: "With the page_refs capability" }),
  multifd: z.object({
    channels: z.number().openapi({ description: "Page channels beside the main stream" }),
    packets: z.number().openapi({ description: "Packets of pages written to them" }),
    compressed_packets: z.number(),
    bytes: z.number().openapi({ description: "Bytes written to them" }),
    sync_points: z.number().openapi({
      description: "Sync points: every channel flushed before the destination went on",
    }),
  }).optional().openapi({ description: "With multifd_channels above 1" }),
  cpu_throttle_percentage: z.number().optional().openapi({
    description: "While auto-converge throttles",
  }),
  resume: ResumeInfoSchema.optional().openapi({
    description: 'Once the channel failed during pre-copy (docs/ARCHITECTURE.md, "Resuming ' +
      'an interrupted pre-copy")',
  }),
  warnings: z.array(z.object({ code: z.string(), message: z.string() })).optional().openapi({
    description:
      "What the operator should know: downtime-limit-unachievable (the round trip alone " +
      "exceeds the limit), stalled-switchover, stalled-throttle, completion-timeout-cancel, " +
      "completion-timeout-switchover, completion-timeout-throttle, forced-switchover-downtime " +
      "(what a switchover forced by a stall or the deadline cost), xbzrle-cache-resize-failed, " +
      "migration-interrupted, migration-resumed, resume-failed",
  }),
}).openapi("MigrationInfo", { example: { status: "none" } });

/** GET /migrations/incoming. */
export const IncomingInfoSchema = z.object({
  id: z.string().optional().openapi({ description: "This incoming migration's id, once armed" }),
  status: z.enum(INCOMING_STATES),
  uri: z.string().optional(),
  address: z.string().optional().openapi({
    description: "Where the peer should connect (real port)",
  }),
  bytes_received: z.number(),
  total_time: z.number().optional(),
  error_desc: z.string().optional(),
  pages: z.object({
    zero: z.number(),
    normal: z.number(),
    compressed: z.number().optional().openapi({ description: "Pages of compressed runs" }),
    refs: z.number().optional().openapi({ description: "Same-page references" }),
    multifd_packets: z.number().optional().openapi({
      description: "Packets of pages that came over the multifd channels (their pages are " +
        "counted in zero and normal)",
    }),
  }).optional(),
  refused_peers: z.number().optional().openapi({
    description: "Connections dropped because they sent no stream header in time (or garbage), " +
      "failed the TLS handshake or did not prove they hold the migration secret",
  }),
  last_refused: z.string().optional().openapi({
    description: "Who the last dropped connection was, and why it was dropped",
  }),
  resume: ResumeInfoSchema.optional().openapi({
    description: "Once the stream broke during pre-copy: the pages held, the resumes",
  }),
}).openapi("IncomingInfo");

/** One 100 ms window of a migration, as the flight recorder keeps it. */
export const TimelineWindowSchema = z.object({
  t: z.number().openapi({ description: "ms from the migration's start to the window's end" }),
  bytes: z.number().openapi({ description: "Stream bytes sent in the window" }),
  total_bytes: z.number().openapi({ description: "Stream bytes sent so far" }),
  pages: z.number().openapi({ description: "RAM pages sent in the window (with data or zero)" }),
  dirty_pages: z.number().openapi({
    description: "Pages the guest dirtied that the window's dirty-log syncs found",
  }),
  dirty_rate: z.number().openapi({ description: "The last pass's dirty rate, bytes/s" }),
  bandwidth: z.number().openapi({ description: "The bandwidth estimate, bytes/s" }),
  max_size: z.number().openapi({
    description: "What may be left to switch over: bandwidth × the downtime budget, bytes",
  }),
  remaining: z.number().openapi({ description: "RAM bytes left to send" }),
  expected_downtime: z.number().openapi({ description: "ms; -1 while unknown" }),
  throttle: z.number().openapi({ description: "auto-converge's vCPU throttle, %" }),
  pass: z.number().openapi({ description: "Dirty-log syncs so far (QEMU's dirty_sync_count)" }),
}).openapi("TimelineWindow");

/** One dirty-log pass of a migration. */
export const TimelinePassSchema = z.object({
  pass: z.number(),
  t: z.number().openapi({ description: "ms from the start to the pass's sync" }),
  dirty_pages: z.number().openapi({ description: "Pages the sync found dirtied" }),
  dirty_rate: z.number().openapi({ description: "Bytes/s dirtied since the sync before" }),
  bandwidth: z.number().openapi({ description: "Bytes/s sent since the sync before" }),
}).openapi("TimelinePass");

/** GET /migrations/{id}/timeline. */
export const TimelineSchema = z.object({
  id: z.string(),
  windows: z.array(TimelineWindowSchema),
  passes: z.array(TimelinePassSchema),
  events: z.array(z.object({
    t: z.number(),
    kind: z.enum(["state", "warning", "throttle"]),
    text: z.string(),
  })).openapi({ description: "State changes, warnings and throttle steps, in order" }),
  dropped_windows: z.number().openapi({
    description: "The oldest windows no longer kept (a timeline keeps at most an hour)",
  }),
}).openapi("Timeline");

/** Why a migration went the way it did, in sentences. */
export const ExplanationSchema = z.object({
  convergence: z.string().openapi({
    description: "Why it converged when it did, or why it did not",
    example: "dirty rate 210 MB/s exceeded the 100 MB/s link from pass 3 on",
  }),
  downtime: z.string().openapi({ description: "Why the downtime landed where it did" }),
}).openapi("Explanation");

/** Directions of a migration as seen from one ferry. */
export const DIRECTIONS = ["outgoing", "incoming"] as const;

/** GET /migrations/{id}, and each entry of GET /migrations. */
export const MigrationRecordSchema = z.object({
  id: z.string(),
  direction: z.enum(DIRECTIONS),
  status: z.string().openapi({
    description: "The outgoing or incoming state; a final one for past migrations",
  }),
  uri: z.string().optional(),
  started_at: z.number().openapi({ description: "Wall-clock ms since the Unix epoch" }),
  ended_at: z.number().optional(),
  total_time: z.number().optional().openapi({ description: "ms" }),
  downtime: z.number().optional().openapi({ description: "ms (outgoing, completed)" }),
  bytes: z.number().openapi({ description: "Stream bytes sent (outgoing) or received" }),
  ram_total: z.number().optional(),
  passes: z.number().optional(),
  cpu_throttle_percentage: z.number().optional().openapi({
    description: "The highest auto-converge throttle reached",
  }),
  error_desc: z.string().optional(),
  warnings: z.array(z.object({ code: z.string(), message: z.string() })).optional(),
  explanation: ExplanationSchema.optional().openapi({
    description: "Outgoing migrations: why it converged (or not) and its downtime",
  }),
}).openapi("MigrationRecord");

/** Capabilities (GET answer, PUT body with any subset). */
export const CapabilitiesSchema = z.object({
  xbzrle: z.boolean(),
  auto_converge: z.boolean(),
  zero_blocks: z.boolean(),
  rdma_pin_all: z.boolean(),
  verify: z.boolean(),
  page_refs: z.boolean().openapi({
    description: "ferry's same-page references: a page equal to one the destination already " +
      "holds from this migration goes as a 16-byte reference to it; on both ends",
  }),
  pause_before_switchover: z.boolean().openapi({
    description: "QEMU's pause-before-switchover: with the guest stopped, the migration waits " +
      "in pre-switchover until POST /migrations/current/continue (or a cancel, which resumes " +
      "the guest here), so the network or storage can be handed over first",
  }),
}).openapi("Capabilities");

/** PUT /migrations/capabilities body. */
export const CapabilitiesPatchSchema = CapabilitiesSchema.partial().strict().openapi(
  "CapabilitiesPatch",
  {
    example: { xbzrle: false },
  },
);

/** Parameters (GET answer). */
export const ParametersSchema = z.object({
  max_bandwidth: z.number().int().openapi({ description: "bytes per second" }),
  downtime_limit: z.number().int().openapi({ description: "ms" }),
  xbzrle_cache_size: z.number().int().openapi({
    description: "bytes (at least one page, at most the guest's RAM)",
  }),
  cpu_throttle_initial: z.number().int(),
  cpu_throttle_increment: z.number().int(),
  progress_timeout: z.number().int().openapi({
    description: "ms without a byte moving before a migration fails, on either side",
  }),
  stall_windows: z.number().int().openapi({
    description:
      "100 ms windows in which what is left to send reaches no new low (1 % below the last) " +
      "before stall_action is taken; 0 never",
  }),
  stall_action: z.enum(STALL_ACTIONS).openapi({
    description: "On a stall: fail the migration, switch over now, or throttle the guest (more)",
  }),
  incoming_page_budget: z.number().int().openapi({
    description: "On a destination: page records an incoming stream may carry, as a multiple " +
      "of the guest's pages, before it is cut as one that would never end",
  }),
  ...SECURITY_PARAMETER_SCHEMAS,
  compress_method: z.enum(COMPRESS_METHODS).openapi({
    description: "Compresses runs of pages (QEMU's multifd-compression): none, zstd or lz4; " +
      "set the same on both ends. Skipped for a window when the link is faster than the " +
      "compressor. Read when a migration starts; not with xbzrle",
  }),
  compress_level: z.number().int().openapi({
    description: "zstd's level (QEMU's multifd-zstd-level); lz4 has one level",
  }),
  resume_grace: z.number().int().openapi({
    description: "ms both sides of a pre-copy whose channel failed stay `interrupted`, waiting " +
      "to resume, before failing as before; 0 fails at once. Needs verify and tcp: or unix:",
  }),
  resume_auto: z.boolean().openapi({
    description: "While interrupted, the source reconnects to the last URI by itself (back-off " +
      "0.5 s doubling to 8 s) and the destination listens again on its address at once",
  }),
  multifd_channels: z.number().int().openapi({
    description: "Connections pages fan out over beside the main stream (QEMU's " +
      "multifd-channels): 1 is the single stream; 2 to 16 need tcp: or unix:, the synthetic " +
      "guest and the same on both ends",
  }),
  completion_timeout_ms: z.number().int().openapi({
    description: "ms from the start a migration may take before on_timeout is taken; 0 none",
  }),
  completion_timeout_per_gib: z.number().int().openapi({
    description: "KubeVirt's completionTimeoutPerGiB: seconds per GiB of guest RAM a migration " +
      "may take before on_timeout is taken; 0 none. With completion_timeout_ms too, the earlier " +
      "deadline counts",
  }),
  on_timeout: z.enum(TIMEOUT_ACTIONS).openapi({
    description: "At the completion deadline: cancel the migration (the guest runs on), switch " +
      "over now (the downtime it cost is reported), or throttle the guest (auto-converge, one " +
      "step now and one each second after; at 99 % and still not done, it fails)",
  }),
}).openapi("Parameters");

/** A numeric parameter in a PATCH body, within its range from the engine's one table. */
function limited(name: NumericParameter) {
  const [min, max] = PARAMETER_LIMITS[name];
  return z.number().int().min(min).max(max).optional();
}

/** PATCH /migrations/parameters body: any subset, each validated. */
export const ParametersPatchSchema = z.object({
  max_bandwidth: limited("max_bandwidth"),
  downtime_limit: limited("downtime_limit"),
  xbzrle_cache_size: limited("xbzrle_cache_size"),
  cpu_throttle_initial: limited("cpu_throttle_initial"),
  cpu_throttle_increment: limited("cpu_throttle_increment"),
  progress_timeout: limited("progress_timeout"),
  stall_windows: limited("stall_windows"),
  stall_action: z.enum(STALL_ACTIONS).optional(),
  incoming_page_budget: limited("incoming_page_budget"),
  tls_cert: SECURITY_PARAMETER_SCHEMAS.tls_cert.optional(),
  tls_key: SECURITY_PARAMETER_SCHEMAS.tls_key.optional(),
  tls_ca: SECURITY_PARAMETER_SCHEMAS.tls_ca.optional(),
  tls_hostname: SECURITY_PARAMETER_SCHEMAS.tls_hostname.optional(),
  migration_secret: SECURITY_PARAMETER_SCHEMAS.migration_secret.optional(),
  snapshot_key: SECURITY_PARAMETER_SCHEMAS.snapshot_key.optional(),
  compress_method: z.enum(COMPRESS_METHODS).optional(),
  compress_level: limited("compress_level"),
  resume_grace: limited("resume_grace"),
  resume_auto: z.boolean().optional(),
  multifd_channels: limited("multifd_channels"),
  completion_timeout_ms: limited("completion_timeout_ms"),
  completion_timeout_per_gib: limited("completion_timeout_per_gib"),
  on_timeout: z.enum(TIMEOUT_ACTIONS).optional(),
}).strict().openapi("ParametersPatch", {
  example: { max_bandwidth: 1073741824, downtime_limit: 300 },
});

/** GET /vm. */
/** Who a ferry migrates with (`--peer`): other ferries, or QEMU (the qemu profile). */
export const PEER_KINDS = ["ferry", "qemu"] as const;
/** One of {@link PEER_KINDS}. */
export type PeerKind = typeof PEER_KINDS[number];

/** The kinds of guest a ferry can run (`--guest`). */
export const GUEST_KINDS = ["synthetic", "x86", "qemu"] as const;

export const VmInfoSchema = z.object({
  guest: z.enum(GUEST_KINDS).openapi({
    description:
      "synthetic: ferry's own vCPU worker; x86: a Linux PC under v86; qemu: a QEMU guest's RAM and device state, held (--peer qemu)",
  }),
  run_state: z.enum(RUN_STATES),
  ram_size: z.number(),
  page_size: z.number(),
  workload: z.string().openapi({ description: "The synthetic guest's workload; `linux` on x86" }),
  throttle: z.number(),
  ops: z.number().nullable().openapi({
    description: "Guest ops the synthetic vCPU has run; null on x86",
  }),
  not_runnable: z.string().optional().openapi({
    description: "Why the guest cannot run (a QEMU guest held under --peer qemu)",
  }),
  qemu: z.object({
    machine: z.string().nullable().openapi({ description: "The last QEMU stream's machine type" }),
    blocks: z.array(z.object({ name: z.string(), length: z.number() })),
    device_sections: z.number().openapi({ description: "QEMU device sections held verbatim" }),
  }).optional().openapi({ description: "What a --peer qemu ferry holds" }),
}).openapi("VmInfo");

/** What resuming did (the `resume` of migration and incoming info). */
export type ResumeInfo = z.infer<typeof ResumeInfoSchema>;
/** One of {@link GUEST_KINDS}. */
export type GuestKind = typeof GUEST_KINDS[number];
/** One of {@link MIGRATION_STATES}. */
export type MigrationStatus = typeof MIGRATION_STATES[number];
/** One of {@link INCOMING_STATES}. */
export type IncomingStatus = typeof INCOMING_STATES[number];
/** One of {@link STALL_ACTIONS}. */
export type StallAction = typeof STALL_ACTIONS[number];
/** One of {@link TIMEOUT_ACTIONS}. */
export type TimeoutAction = typeof TIMEOUT_ACTIONS[number];
/** RAM progress, QEMU's query-migrate `ram` fields. */
export type RamInfo = z.infer<typeof RamInfoSchema>;
/** What GET /migrations/current answers (QEMU's query-migrate). */
export type MigrationInfo = z.infer<typeof MigrationInfoSchema>;
/** One warning of a migration (also sent as a `warning` event). */
export type MigrationWarning = NonNullable<MigrationInfo["warnings"]>[number];
/** What GET /migrations/incoming answers. */
export type IncomingInfo = z.infer<typeof IncomingInfoSchema>;
/** Migration capabilities (QEMU's migrate-set-capabilities), plus ferry's `verify`. */
export type Capabilities = z.infer<typeof CapabilitiesSchema>;
/** Migration parameters (QEMU's migrate-set-parameters, plus ferry's). */
export type Parameters = z.infer<typeof ParametersSchema>;
/** One recorded 100 ms window. */
export type TimelineWindow = z.infer<typeof TimelineWindowSchema>;
/** One recorded pass. */
export type TimelinePass = z.infer<typeof TimelinePassSchema>;
/** What GET /migrations/{id}/timeline answers. */
export type Timeline = z.infer<typeof TimelineSchema>;
/** A migration's explanation. */
export type Explanation = z.infer<typeof ExplanationSchema>;
/** One migration of the history. */
export type MigrationRecord = z.infer<typeof MigrationRecordSchema>;
/** What GET /vm answers. */
export type VmInfo = z.infer<typeof VmInfoSchema>;
