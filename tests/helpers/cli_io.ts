import type { Io } from "../../tools/ferryctl.ts";

/** An Io for ferryctl's run() that keeps what the CLI prints (not a terminal). */
export function capture(): Io & { stdout: string; stderr: string } {
  const io = {
    stdout: "",
    stderr: "",
    tty: false,
    out(text: string) {
      io.stdout += text;
    },
    err(text: string) {
      io.stderr += text;
    },
  };
  return io;
}
