/**
 * The switchover handshake over the migration connection (QEMU's return path,
 * plus one ferry command), so that a migration is never reported `completed`
 * unless the destination holds the whole, valid stream, and a destination never
 * starts a guest the source may also resume.
 *
 * On duplex transports (tcp:, unix:) the source announces the return path in the
 * stream with QEMU's `COMMAND OPEN_RETURN_PATH` right after setup. Then, after the
 * last byte of the stream (EOF and vmdescription):
 *
 * 1. the destination, having loaded and validated everything, answers on the
 *    return path with QEMU's `MIG_RP_MSG_SHUT` status 0
 *    (`be16 type 1, be16 len 4, be32 status`);
 * 2. the source, on reading it, sends `COMMAND FERRY_COMMIT` (`0x08, be16 0x4601,
 *    be16 0`) and reports `completed`; its guest stays stopped;
 * 3. the destination, on reading the commit, starts its guest (or pauses it).
 *
 * Any fault before 2 fails both sides: the source resumes its guest, the
 * destination keeps its partial one unstartable. A destination that fails (a
 * malformed stream, an integrity mismatch) first sends its reason on the return
 * path (`be16 0x4601, be16 len, UTF-8 text`), which the source, reading the return
 * path all along, reports as its own failure. A fault that loses the commit in
 * flight leaves both guests stopped — never both running — with the source's RAM
 * intact (POST /vm/start on the source resumes it).
 *
 * Before it stops the guest, the source drains the pipe with QEMU's `COMMAND PING`
 * (`0x08, be16 2, be16 4, be32 value`), which the destination answers with
 * `MIG_RP_MSG_PONG` (`be16 2, be16 4, be32 value`) once it has loaded everything
 * before it: data still queued in socket buffers and on the link would otherwise
 * be paid for during the downtime, invisible to the bandwidth estimate. A second
 * PING measures the bare round trip, which the switchover handshake costs.
 *
 * Streams over exec:, fd: and file: carry no OPEN_RETURN_PATH and complete as
 * before, when the last byte is written.
 */
import type { Channel } from "../transports/transport.ts";
import { Section } from "./format/constants.ts";
import { StreamError, type StreamReader } from "./format/reader.ts";
import type { StreamWriter } from "./format/writer.ts";

/** QEMU's MIG_CMD_OPEN_RETURN_PATH. */
export const MIG_CMD_OPEN_RETURN_PATH = 1;
/** QEMU's MIG_CMD_PING (be32 value): the destination answers PONG with the value once it got here. */
export const MIG_CMD_PING = 2;
/** ferry's switchover commit command ("F" 1), sent by the source after the destination's SHUT. */
export const MIG_CMD_FERRY_COMMIT = 0x4601;
/** QEMU's MIG_RP_MSG_SHUT: the destination is done (be32 status, 0 = success). */
export const MIG_RP_MSG_SHUT = 1;
/** QEMU's MIG_RP_MSG_PONG: the answer to a PING (be32 value). */
export const MIG_RP_MSG_PONG = 2;
/** ferry's failure report ("F" 1): the destination's reason as text, sent before it hangs up. */
export const MIG_RP_MSG_FERRY_ERROR = 0x4601;
/** Most bytes of text in a failure report. */
const MAX_ERROR_TEXT = 1024;

/** True when a migration over `uri` uses the return path (duplex socket transports). */
export function usesReturnPath(uri: string): boolean {
  return uri.startsWith("tcp:") || uri.startsWith("unix:");
}

/** Appends `COMMAND OPEN_RETURN_PATH` to the stream (source, after setup). */
export async function sendOpenReturnPath(w: StreamWriter): Promise<void> {
  await w.room(5);
  w.u8(Section.COMMAND);
  w.be16(MIG_CMD_OPEN_RETURN_PATH);
  w.be16(0);
}

/** Appends `COMMAND PING value` to the stream (source, before a switchover). */
export async function sendPing(w: StreamWriter, value: number): Promise<void> {
  await w.room(9);
  w.u8(Section.COMMAND);
  w.be16(MIG_CMD_PING);
  w.be16(4);
  w.be32(value);
}

/** An 8-byte return-path message: `be16 type, be16 4, be32 value`. */
function rpMessage(type: number, value: number): Uint8Array {
  const out = new Uint8Array(8);
  const v = new DataView(out.buffer);
  v.setUint16(0, type);
  v.setUint16(2, 4);
  v.setUint32(4, value);
  return out;
}

/** The 8-byte SHUT message with `status`. */
export function shutMessage(status: number): Uint8Array {
  return rpMessage(MIG_RP_MSG_SHUT, status);
}

/** The 8-byte PONG message answering PING `value`. */
export function pongMessage(value: number): Uint8Array {
  return rpMessage(MIG_RP_MSG_PONG, value);
}

/** The destination's failure message: `be16 0x4601, be16 len, UTF-8 text` (at most 1 KiB of text). */
export function errorMessage(text: string): Uint8Array {
  let bytes = new TextEncoder().encode(text);
  if (bytes.length > MAX_ERROR_TEXT) bytes = bytes.subarray(0, MAX_ERROR_TEXT);
  const out = new Uint8Array(4 + bytes.length);
  const v = new DataView(out.buffer);
  v.setUint16(0, MIG_RP_MSG_FERRY_ERROR);
  v.setUint16(2, bytes.length);
  out.set(bytes, 4);
  return out;
}

/** The destination reported that it failed, over the return path; `message` is its own reason. */
export class DestinationError extends Error {
  override readonly name = "DestinationError";
  constructor(readonly reason: string) {
    super(`The destination failed: ${reason}`);
  }
}

/** One message read from the return path. */
interface RpMessage {
  readonly type: number;
  readonly value: number;
}

/**
 * The source's end of the return path (QEMU's source_return_path_thread): once
 * the stream opened it, a background loop reads every message the destination
 * sends. PONG and SHUT are handed to whoever awaits them; the destination's error
 * message fails the migration at once with the destination's own reason
 * (`onError`), even while the source is still streaming pages.
 */
export class SourceReturnPath {
  readonly #channel: Channel;
  readonly #onError: (e: DestinationError) => void;
  readonly #queue: RpMessage[] = [];
  #waiter: { resolve: (m: RpMessage) => void; reject: (e: Error) => void } | null = null;
  #ended: Error | null = null;
  #error: DestinationError | null = null;
  /** Resolves when the reading loop stopped (the peer closed, failed, or the channel closed). */
  readonly done: Promise<void>;

  constructor(channel: Channel, onError: (e: DestinationError) => void) {
    this.#channel = channel;
    this.#onError = onError;
    this.done = this.#loop().catch(() => {});
  }

  /** The destination's reported failure, if it sent one. */
  get error(): DestinationError | null {
    return this.#error;
  }

  /** Source side: reads the PONG answering PING `value`. */
  async awaitPong(value: number): Promise<void> {
    const m = await this.#next(`answering PING ${value}`);
    if (m.type !== MIG_RP_MSG_PONG || m.value !== value) {
      throw new Error(
        `expected PONG ${value} on the return path, got message type ${m.type}, value ${m.value}`,
      );
    }
  }

  /**
   * Source side, after the whole stream was written: waits for the destination's
   * SHUT (status 0), then sends the commit. Throws when the destination closed,
   * failed, answered anything else, or the commit could not be written.
   */
  async switchover(): Promise<void> {
    const m = await this.#next("confirming that it loaded the stream");
    if (m.type !== MIG_RP_MSG_SHUT) {
      throw new Error(`unexpected return-path message type ${m.type} instead of SHUT`);
    }
    if (m.value !== 0) {
      throw new Error(`the destination failed to load the stream (status ${m.value})`);
    }
    await this.#channel.write(commitCommand());
  }

  #next(waitingFor: string): Promise<RpMessage> {
    const m = this.#queue.shift();
    if (m) return Promise.resolve(m);
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) {
      return Promise.reject(
        new Error(`the destination closed the connection without ${waitingFor}`, {
          cause: this.#ended,
        }),
      );
    }
    return new Promise((resolve, reject) => {
      this.#waiter = {
        resolve,
        reject: (e) =>
          reject(
            e instanceof DestinationError
              ? e
              : new Error(`the destination closed the connection without ${waitingFor}`, {
                cause: e,
              }),
          ),
      };
    });
  }

  async #loop(): Promise<void> {
    const header = new Uint8Array(4);
    try {
      for (;;) {
        if (!(await readFully(this.#channel, header))) throw new Error("end of stream");
        const view = new DataView(header.buffer);
        const type = view.getUint16(0);
        const len = view.getUint16(2);
        if (type === MIG_RP_MSG_FERRY_ERROR) {
          const text = new Uint8Array(Math.min(len, MAX_ERROR_TEXT));
          if (len > MAX_ERROR_TEXT || !(await readFully(this.#channel, text))) {
            throw new Error("a truncated error message on the return path");
          }
          this.#error = new DestinationError(new TextDecoder().decode(text));
          this.#waiter?.reject(this.#error);
          this.#waiter = null;
          this.#onError(this.#error);
          return;
        }
        if ((type !== MIG_RP_MSG_PONG && type !== MIG_RP_MSG_SHUT) || len !== 4) {
          throw new Error(`unknown return-path message type ${type}, length ${len}`);
        }
        const body = new Uint8Array(4);
        if (!(await readFully(this.#channel, body))) throw new Error("end of stream");
        const m = { type, value: new DataView(body.buffer).getUint32(0) };
        if (this.#waiter) {
          this.#waiter.resolve(m);
          this.#waiter = null;
        } else {
          this.#queue.push(m);
        }
      }
    } catch (e) {
      this.#ended = e instanceof Error ? e : new Error(String(e));
      this.#waiter?.reject(this.#ended);
      this.#waiter = null;
    }
  }
}

/** Reads exactly `buf.length` bytes; false when the stream ended first. */
export async function readFully(channel: Channel, buf: Uint8Array): Promise<boolean> {
  let got = 0;
  while (got < buf.length) {
    const n = await channel.read(buf.subarray(got));
    if (n === null) return false;
    got += n;
  }
  return true;
}

/** The 5-byte commit command. */
export function commitCommand(): Uint8Array {
  return Uint8Array.of(
    Section.COMMAND,
    MIG_CMD_FERRY_COMMIT >> 8,
    MIG_CMD_FERRY_COMMIT & 0xff,
    0,
    0,
  );
}

/**
 * Destination side, after loadStream() succeeded on a stream that opened the
 * return path: sends SHUT status 0, then reads the source's commit. Throws a
 * StreamError when the commit does not come (connection ended) or is malformed.
 */
export async function destinationSwitchover(r: StreamReader, channel: Channel): Promise<void> {
  await channel.write(shutMessage(0));
  const at = r.offset;
  try {
    await r.need(5);
  } catch (e) {
    if (e instanceof StreamError) {
      throw new StreamError(
        at,
        "the source did not commit the switchover (the connection ended after the stream)",
        { cause: e },
      );
    }
    throw e;
  }
  const type = r.u8();
  const cmd = r.be16();
  const len = r.be16();
  if (type !== Section.COMMAND || cmd !== MIG_CMD_FERRY_COMMIT || len !== 0) {
    throw new StreamError(
      at,
      `expected the switchover commit (0x08 0x4601), found type 0x${type.toString(16)} ` +
        `command 0x${cmd.toString(16)} length ${len}`,
    );
  }
}
