/**
 * Resuming an interrupted pre-copy (docs/ARCHITECTURE.md, "Resuming an interrupted
 * pre-copy"). When the channel fails while the guest still runs on the source,
 * both sides wait `resume_grace` ms in `interrupted` instead of failing: the source
 * keeps its guest running and its dirty log recording, the destination keeps what
 * it loaded. A new connection then carries the same migration on:
 *
 * 1. the source sends the savevm header and `COMMAND FERRY_RESUME` (`0x08, be16
 *    0x4602, be16 len, JSON`): the migration's id (sent in the first stream as
 *    `COMMAND FERRY_MIGRATION_ID`, `0x08, be16 0x4603, be16 16, 16 bytes`), the
 *    machine type and the RAM blocks;
 * 2. the destination checks all three against what it holds and either refuses in
 *    a failure message (`be16 0x4601, be16 len, text`) and listens on, or answers
 *    with its received-pages bitmap and its digest sums (received_bitmap.ts);
 * 3. the source marks the pages the destination lacks (or holds stale) to go
 *    again, and the pre-copy loop carries on with PART sections, as if the stream
 *    had never broken. Pages dirtied meanwhile are in the dirty log.
 *
 * QEMU's postcopy recovery (`migrate-recover`, `migrate resume=true`,
 * MIG_CMD_RECV_BITMAP / MIG_RP_MSG_RECV_BITMAP) has the same shape. A cut once the
 * source stopped its guest (the stop-and-copy) fails as before, on both sides.
 * @module
 */
import type { Channel } from "../transports/transport.ts";
import { PAGE_SIZE, QEVM_MAGIC, QEVM_VERSION, Section } from "./format/constants.ts";
import { StreamError, type StreamReader } from "./format/reader.ts";
import type { StreamWriter } from "./format/writer.ts";
import { IntegrityError, type MigrationDigests } from "./integrity.ts";
import { errorMessage, MIG_RP_MSG_FERRY_ERROR, readFully } from "./return_path.ts";
import {
  encodeReceived,
  pagesToResend,
  ReceivedBitmapReader,
  type ReceivedBlock,
} from "./received_bitmap.ts";
import type { ResumeInfo } from "./contract.ts";

/** ferry's resume request command ("F" 2), the first command of a resuming stream. */
export const MIG_CMD_FERRY_RESUME = 0x4602;
/** ferry's migration id command ("F" 3), sent after OPEN_RETURN_PATH when resuming is on. */
export const MIG_CMD_FERRY_MIGRATION_ID = 0x4603;
/** Bytes of a migration id. */
export const MIGRATION_ID_BYTES = 16;
/** Largest resume request (JSON) accepted. */
const MAX_REQUEST_BYTES = 0xffff;
/** The automatic reconnect's waits, ms: doubling from the first, then the last again. */
export const RESUME_BACKOFF_MS = [500, 1000, 2000, 4000, 8000] as const;

/** Who a resuming stream claims to continue: the migration and the guest's shape. */
export interface ResumeIdentity {
  /** The migration's id, 32 hex digits. */
  readonly migration: string;
  /** The machine type of the stream's configuration section. */
  readonly machine: string;
  /** The RAM blocks, in order. */
  readonly blocks: readonly { readonly name: string; readonly length: number }[];
}

/** The other side refused to resume (wrong migration, wrong guest, nothing to resume). */
export class ResumeRefusedError extends Error {
  override readonly name = "ResumeRefusedError";
  constructor(readonly reason: string, options?: ErrorOptions) {
    super(`Cannot resume the migration: ${reason}`, options);
  }
}

/** A new random migration id. */
export function newMigrationId(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(MIGRATION_ID_BYTES)), hex2).join("");
}

function hex2(b: number): string {
  return b.toString(16).padStart(2, "0");
}

/** Appends `COMMAND FERRY_MIGRATION_ID id` to the stream (source, after OPEN_RETURN_PATH). */
export async function sendMigrationId(w: StreamWriter, id: string): Promise<void> {
  await w.room(5 + MIGRATION_ID_BYTES);
  w.u8(Section.COMMAND);
  w.be16(MIG_CMD_FERRY_MIGRATION_ID);
  w.be16(MIGRATION_ID_BYTES);
  for (let i = 0; i < MIGRATION_ID_BYTES; i++) w.u8(parseInt(id.slice(2 * i, 2 * i + 2), 16));
}

/** Reads the id of a FERRY_MIGRATION_ID command whose type and length were read (destination). */
export async function readMigrationId(r: StreamReader, len: number, at: number): Promise<string> {
  if (len !== MIGRATION_ID_BYTES) {
    throw new StreamError(at, `command FERRY_MIGRATION_ID with ${len} bytes (expects 16)`);
  }
  await r.need(len);
  return Array.from(r.take(len), hex2).join("");
}

/** The identity of a migration of `blocks` under `machine` with id `migration`. */
export function identityOf(
  migration: string,
  machine: string,
  blocks: readonly { readonly name: string; readonly length: number }[],
): ResumeIdentity {
  return { migration, machine, blocks: blocks.map((b) => ({ name: b.name, length: b.length })) };
}

/** The first bytes of a resuming stream: the header and the FERRY_RESUME command. */
export function resumeRequest(identity: ResumeIdentity): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(identity));
  const out = new Uint8Array(8 + 5 + json.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, QEVM_MAGIC);
  v.setUint32(4, QEVM_VERSION);
  out[8] = Section.COMMAND;
  v.setUint16(9, MIG_CMD_FERRY_RESUME);
  v.setUint16(11, json.length);
  out.set(json, 13);
  return out;
}

/**
 * Destination side: reads a resuming stream's header and FERRY_RESUME command.
 * Throws a ResumeRefusedError, with what to do, when the stream is not a resume.
 */
export async function readResumeRequest(r: StreamReader): Promise<ResumeIdentity> {
  await r.need(13);
  const magic = r.be32();
  const version = r.be32();
  const type = r.u8();
  const cmd = r.be16();
  const len = r.be16();
  if (magic !== QEVM_MAGIC || version !== QEVM_VERSION) {
    throw new ResumeRefusedError("the connection did not start a savevm v3 stream");
  }
  if (type !== Section.COMMAND || cmd !== MIG_CMD_FERRY_RESUME) {
    throw new ResumeRefusedError(
      "this destination holds an interrupted migration and takes only its resume; disarm it " +
        "(DELETE /migrations/incoming) before starting another",
    );
  }
  if (len > MAX_REQUEST_BYTES) throw new ResumeRefusedError("the resume request is too large");
  await r.need(len);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(r.take(len)));
  } catch (e) {
    throw new ResumeRefusedError("the resume request is not JSON", { cause: e });
  }
  const p = parsed as Partial<ResumeIdentity> | null;
  if (
    typeof p?.migration !== "string" || typeof p.machine !== "string" ||
    !Array.isArray(p.blocks) ||
    !p.blocks.every((b) => typeof b?.name === "string" && Number.isSafeInteger(b?.length))
  ) {
    throw new ResumeRefusedError("the resume request is malformed");
  }
  return identityOf(p.migration, p.machine, p.blocks);
}

/** Why a resume request for `theirs` does not continue the migration `mine`, or null when it does. */
export function identityMismatch(theirs: ResumeIdentity, mine: ResumeIdentity): string | null {
  if (theirs.migration !== mine.migration) {
    return `the source resumes migration ${theirs.migration}, this destination holds ` +
      `migration ${mine.migration}`;
  }
  if (theirs.machine !== mine.machine) {
    return `the source's machine type is "${theirs.machine}", this destination's "${mine.machine}"`;
  }
  const shape = (b: ResumeIdentity["blocks"]) => b.map((x) => `${x.name}:${x.length}`).join(",");
  if (shape(theirs.blocks) !== shape(mine.blocks)) {
    return `the source's RAM blocks (${shape(theirs.blocks)}) differ from this destination's ` +
      `(${shape(mine.blocks)})`;
  }
  return null;
}

/**
 * Destination side, on a new connection while interrupted: reads the resume
 * request and checks it against `mine`. On a match it sends the received-pages
 * bitmap and returns; otherwise it tells the source why, closes the connection and
 * throws the ResumeRefusedError.
 */
export async function answerResume(
  r: StreamReader,
  channel: Channel,
  mine: ResumeIdentity,
  digests: MigrationDigests,
): Promise<void> {
  try {
    const theirs = await readResumeRequest(r);
    const why = identityMismatch(theirs, mine);
    if (why !== null) throw new ResumeRefusedError(why);
  } catch (e) {
    if (e instanceof ResumeRefusedError) {
      await channel.write(errorMessage(`resume refused: ${e.reason}`)).catch(() => {});
    }
    channel.close();
    throw e;
  }
  for (const m of encodeReceived(digests)) await channel.write(m);
}

/** What the source learned from the destination when it resumed. */
export interface ResumeAnswer {
  /** Per block, the pages to send again. */
  readonly maps: Uint32Array[];
  /** Pages the destination holds as last sent. */
  readonly held: number;
  /** Pages it lacks or holds stale. */
  readonly resend: number;
}

/**
 * Source side, on a new connection: sends the resume request, reads the
 * destination's received-pages bitmap and compares it with `digests` (what this
 * source sent). Throws a ResumeRefusedError with the destination's reason when it
 * refused, and another error when the connection ends first.
 */
export async function requestResume(
  channel: Channel,
  identity: ResumeIdentity,
  digests: MigrationDigests,
): Promise<ResumeAnswer> {
  await channel.write(resumeRequest(identity));
  const reader = new ReceivedBitmapReader(digests.ram.map((r) => r.table.units));
  const head = new Uint8Array(4);
  for (;;) {
    if (!(await readFully(channel, head))) {
      throw new Error("the destination closed the connection before answering the resume request");
    }
    const v = new DataView(head.buffer);
    const type = v.getUint16(0);
    const body = new Uint8Array(v.getUint16(2));
    if (!(await readFully(channel, body))) {
      throw new Error("the destination closed the connection inside its resume answer");
    }
    if (type === MIG_RP_MSG_FERRY_ERROR) {
      const text = new TextDecoder().decode(body).replace(/^resume refused: /, "");
      throw new ResumeRefusedError(`the destination refused: ${text}`);
    }
    if (reader.feed(type, body)) break;
  }
  const plan = pagesToResend(digests, reader.result as ReceivedBlock[]);
  if (plan.foreign > 0) {
    // The digests so far disagree in a way no lost record explains.
    throw new ResumeRefusedError(
      `the destination holds ${plan.foreign} pages this migration never sent: its digests are ` +
        "not this migration's",
    );
  }
  return plan;
}

/**
 * Destination side: true when `e`, which ended a load, is the channel breaking (a
 * truncated stream, a transport error) rather than a stream found invalid, which
 * fails as before whatever the phase.
 */
export function isChannelBreak(e: unknown): boolean {
  if (e instanceof IntegrityError) return false;
  if (e instanceof StreamError) return e.reason.startsWith("stream truncated");
  return e instanceof Error;
}

/** One resume asked for through the API: where to, and how to answer the caller. */
export interface ResumeRequest {
  readonly uri: string;
  /** Made by the automatic reconnect (resume_auto), not asked for. */
  readonly auto?: boolean;
  /** Settles the caller's promise: resumed (no argument) or refused with `error`. */
  settle(error?: unknown): void;
}

/**
 * The source's resume requests while interrupted: the API queues one
 * ({@link request}), the migration takes it ({@link next}) and answers it once the
 * new channel resumed or failed.
 */
export class ResumeRequests {
  readonly #queue: ResumeRequest[] = [];
  #waiter: ((r: ResumeRequest) => void) | null = null;

  /** Queues a resume to `uri`; resolves once the migration carries on, rejects when refused. */
  request(uri: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const req: ResumeRequest = { uri, settle: (e) => (e === undefined ? resolve() : reject(e)) };
      if (this.#waiter) {
        const w = this.#waiter;
        this.#waiter = null;
        w(req);
      } else this.#queue.push(req);
    });
  }

  /** The next request, or rejects once `signal` aborts. */
  next(signal: AbortSignal): Promise<ResumeRequest> {
    const queued = this.#queue.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise<ResumeRequest>((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      const onAbort = () => {
        this.#waiter = null;
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiter = (r) => {
        signal.removeEventListener("abort", onAbort);
        resolve(r);
      };
    });
  }

  /** Refuses every queued request with `error` (the migration ended). */
  refuseAll(error: unknown): void {
    for (const r of this.#queue.splice(0)) r.settle(error);
  }
}

/** Counters behind the `resume` info of either side. */
export class ResumeStats {
  interruptions = 0;
  resumes = 0;
  pagesHeld = 0;
  pagesResent = 0;
  bytesSaved = 0;
  lastError: string | undefined;
  /** While interrupted: the clock time the grace period ends. */
  graceEnds: number | undefined;

  /** Records a resume that found `held` pages in place and `resent` to send again. */
  resumed(held: number, resent: number): void {
    this.resumes++;
    this.pagesHeld = held;
    this.pagesResent = resent;
    this.bytesSaved += held * PAGE_SIZE;
    this.graceEnds = undefined;
  }

  /** The info, or undefined before any interruption. */
  info(now: number, bytesAfterResume?: number): ResumeInfo | undefined {
    if (this.interruptions === 0) return undefined;
    return {
      interruptions: this.interruptions,
      resumes: this.resumes,
      ...(this.graceEnds !== undefined
        ? { grace_left: Math.max(0, Math.round(this.graceEnds - now)) }
        : {}),
      ...(this.lastError !== undefined ? { last_error: this.lastError } : {}),
      pages_held: this.pagesHeld,
      pages_resent: this.pagesResent,
      bytes_saved: this.bytesSaved,
      ...(bytesAfterResume !== undefined && this.resumes > 0
        ? { bytes_after_resume: bytesAfterResume }
        : {}),
    };
  }
}
