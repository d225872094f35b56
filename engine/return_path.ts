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
 * destination keeps its partial one unstartable. A fault that loses the commit in
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

/** Reads one 8-byte return-path message; `waitingFor` names it in the error when the peer closed. */
async function readMessage(
  channel: Channel,
  waitingFor: string,
): Promise<{ type: number; len: number; value: number }> {
  const msg = new Uint8Array(8);
  let got = 0;
  while (got < msg.length) {
    const n = await channel.read(msg.subarray(got));
    if (n === null) {
      throw new Error(`the destination closed the connection without ${waitingFor}`);
    }
    got += n;
  }
  const v = new DataView(msg.buffer);
  return { type: v.getUint16(0), len: v.getUint16(2), value: v.getUint32(4) };
}

/**
 * Source side: reads the PONG answering PING `value`. Throws when the destination
 * closed or answered anything else (a failed load closes the connection).
 */
export async function awaitPong(channel: Channel, value: number): Promise<void> {
  const m = await readMessage(channel, `answering PING ${value}`);
  if (m.type !== MIG_RP_MSG_PONG || m.len !== 4 || m.value !== value) {
    throw new Error(
      `expected PONG ${value} on the return path, got message type ${m.type}, ` +
        `length ${m.len}, value ${m.value}`,
    );
  }
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
 * Source side, after the whole stream was written: waits for the destination's
 * SHUT (status 0), then sends the commit. Throws when the destination closed,
 * answered anything else, or the commit could not be written.
 */
export async function sourceSwitchover(channel: Channel): Promise<void> {
  const { type, len, value: status } = await readMessage(
    channel,
    "confirming that it loaded the stream",
  );
  if (type !== MIG_RP_MSG_SHUT || len !== 4) {
    throw new Error(`unexpected return-path message type ${type}, length ${len}`);
  }
  if (status !== 0) throw new Error(`the destination failed to load the stream (status ${status})`);
  await channel.write(commitCommand());
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
