/**
 * Follows a ferry's serial console over `GET /vm/console` into a {@link ConsoleLog},
 * so tests and tools wait on what the guest prints (a tick, a shell's answer)
 * rather than on time.
 * @module
 */
import { ConsoleLog } from "../vm/x86/console_log.ts";
import type { FerryClient } from "./ferry_process.ts";
import { SseReader } from "./sse_reader.ts";

/** A console being followed: its log so far, and how to stop. */
export interface FollowedConsole extends AsyncDisposable {
  readonly log: ConsoleLog;
  close(): Promise<void>;
}

/** Opens the console stream of `ferry` (replaying `replay` bytes of history) and feeds a log. */
export async function followConsole(
  ferry: FerryClient,
  replay = 64 * 1024,
): Promise<FollowedConsole> {
  const res = await ferry.fetch(`/vm/console?replay=${replay}`);
  if (res.status !== 200 || !res.body) {
    throw new Error(`GET /vm/console answered ${res.status}: ${await res.text()}`);
  }
  const reader = new SseReader(res.body);
  const log = new ConsoleLog();
  const encoder = new TextEncoder();
  const pump = (async () => {
    for (;;) {
      const frame = await reader.next().catch(() => null);
      if (frame === null) return;
      if (frame.event !== "output" || frame.data === undefined) continue;
      log.append(encoder.encode((JSON.parse(frame.data) as { text: string }).text));
    }
  })();
  const close = async () => {
    await reader.cancel().catch(() => {});
    await pump;
  };
  return { log, close, [Symbol.asyncDispose]: close };
}
