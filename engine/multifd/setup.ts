/**
 * Opening multifd (docs/ARCHITECTURE.md, "Multifd"): the main stream announces
 * the channels with ferry's COMMAND MULTIFD, the destination answers a PING
 * after it (so its door has taken the main stream and knows the session), and
 * only then does the source connect the page channels, each opening with its
 * hello. Also: which migrations can use multifd.
 * @module
 */
import type { Channel } from "../../transports/transport.ts";
import type { Guest } from "../../vm/guest.ts";
import { Section } from "../format/constants.ts";
import type { StreamWriter } from "../format/writer.ts";
import { SESSION_BYTES } from "./packet.ts";
import type { MultifdSender } from "./sender.ts";

/** Why the x86 guest takes no part in multifd. */
export const X86_WHY = "the x86 guest's RAM is v86's own, unshared memory, which the " +
  "migration reaches through a copy that only the emulator's thread refreshes and writes " +
  "back, so multifd's worker threads cannot work on it";

/** ferry's COMMAND announcing multifd: `be16 channels`, then the 16-byte session id. */
export const MIG_CMD_FERRY_MULTIFD = 0x4604;
/** Bytes of that command's data. */
export const MULTIFD_COMMAND_BYTES = 2 + SESSION_BYTES;

/**
 * ferry's COMMAND MULTIFD_FLUSH (no data): a sync point between sections, as the
 * RAM section's FLUSH record is one inside them. The drain sends it before its
 * PINGs, so their PONG means every channel's pages are applied too.
 */
export const MIG_CMD_FERRY_MULTIFD_FLUSH = 0x4605;

/** Appends `COMMAND MULTIFD_FLUSH` to the stream. */
export async function sendMultifdFlush(w: StreamWriter): Promise<void> {
  await w.room(5);
  w.u8(Section.COMMAND);
  w.be16(MIG_CMD_FERRY_MULTIFD_FLUSH);
  w.be16(0);
}

/** Appends `COMMAND MULTIFD count session` to the stream. */
export async function sendMultifdCommand(
  w: StreamWriter,
  count: number,
  session: Uint8Array,
): Promise<void> {
  await w.room(5 + MULTIFD_COMMAND_BYTES);
  w.u8(Section.COMMAND);
  w.be16(MIG_CMD_FERRY_MULTIFD);
  w.be16(MULTIFD_COMMAND_BYTES);
  w.be16(count);
  w.raw(session);
}

/**
 * Announces `sender`'s channels on the main stream, waits for `ping` (a PING
 * answered on the return path), connects `sender.count` channels with `connect`
 * and starts the sender on them. A channel that cannot be connected closes the
 * ones that were.
 */
export async function openMultifd(
  sender: MultifdSender,
  writer: StreamWriter,
  ping: () => Promise<void>,
  connect: () => Promise<Channel>,
): Promise<void> {
  await sendMultifdCommand(writer, sender.count, sender.session);
  await writer.flush();
  await ping();
  const channels: Channel[] = [];
  try {
    for (let i = 0; i < sender.count; i++) channels.push(await connect());
    await sender.start(channels);
  } catch (e) {
    for (const c of channels) c.close();
    throw e;
  }
}

/**
 * Why a migration to `uri` cannot use `channels` multifd channels, or null when
 * it can: only between ferries, only sockets carry more than one connection, and
 * only a guest whose RAM blocks are shared memory other threads may read and write.
 */
export function multifdRefusal(
  channels: number,
  uri: string,
  guest: Guest,
  peer = "ferry",
): string | null {
  if (channels <= 1) return null;
  if (peer !== "ferry") {
    return `multifd_channels ${channels} is ferry's own framing, which a ${peer} peer (--peer ` +
      `${peer}) does not speak (set multifd_channels to 1)`;
  }
  const scheme = /^([a-z]+):/.exec(uri)?.[1] ?? uri;
  if (scheme !== "tcp" && scheme !== "unix") {
    return `multifd_channels ${channels} needs a tcp: or unix: URI: a ${scheme}: stream is ` +
      `one channel (set multifd_channels to 1)`;
  }
  if (guest.machine !== undefined) {
    return `multifd_channels ${channels} needs the synthetic guest: ${X86_WHY} (set ` +
      `multifd_channels to 1)`;
  }
  return null;
}
