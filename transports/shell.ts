/**
 * A shell command run for the `exec:` transport: `sh -c COMMAND` in a process
 * group of its own, with its stderr's last lines kept for error messages, and a
 * stop() that kills the whole group and reaps the shell.
 * @module
 */

/** Milliseconds a command gets between SIGTERM and SIGKILL when it is stopped. */
export const KILL_GRACE_MS = 1000;

/** Most lines of stderr quoted in an error message. */
export const STDERR_TAIL_LINES = 5;

/** Most characters of stderr quoted in an error message. */
export const STDERR_TAIL_CHARS = 1024;

/** Bytes of stderr kept while the command runs (enough for the quoted tail). */
const STDERR_KEEP_BYTES = 8192;

/** Longest wait for the stderr pipe to drain once the shell exited (a grandchild may hold it). */
const STDERR_DRAIN_MS = 250;

/** Which of the command's standard streams ferry talks to; stderr is always captured. */
export interface ShellOptions {
  /** "piped": ferry writes the command's stdin (outgoing); "null" otherwise. */
  readonly stdin: "piped" | "null";
  /** "piped": ferry reads the command's stdout (incoming); "null" otherwise. */
  readonly stdout: "piped" | "null";
  /** Milliseconds between SIGTERM and SIGKILL in {@link ShellProcess.stop}. */
  readonly killGraceMs?: number;
  /**
   * How the new session is made: util-linux `setsid` (the default when it is
   * installed) or Deno's `detached` spawn (the fallback; tests force it).
   */
  readonly session?: "setsid" | "detached";
}

/** Whether util-linux `setsid` is missing (then Deno's `detached` is used instead). */
let noSetsid = false;

/**
 * Spawns `sh -c command` as the leader of a new session and process group, so
 * the group can be killed as a whole. util-linux `setsid` does it in place (a
 * child of ferry is never a group leader, so setsid execs without forking and
 * the pid Deno reports is the group's id). Deno's own `detached: true` does the
 * same, but reading its stdout pipe measured 5–8× slower on this project's
 * 2-core machine, so it is only the fallback for systems without `setsid`.
 */
function spawnInOwnSession(command: string, options: ShellOptions): Deno.ChildProcess {
  const io = { stdin: options.stdin, stdout: options.stdout, stderr: "piped" } as const;
  if (!noSetsid && options.session !== "detached") {
    try {
      return new Deno.Command("setsid", { args: ["sh", "-c", command], ...io }).spawn();
    } catch (err) {
      // Not installed, or not allowed by a restricted --allow-run: use Deno's own.
      if (!(err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotCapable)) {
        throw err;
      }
      noSetsid = true;
    }
  }
  return new Deno.Command("sh", { args: ["-c", command], ...io, detached: true }).spawn();
}

/**
 * One `sh -c COMMAND` child, leading its own session and process group, so
 * {@link stop} can signal everything the command started — a pipeline like
 * `gzip -c | ssh host …` included — and never leaves an orphan behind. The
 * shell itself is always reaped: {@link status} resolves once it is.
 */
export class ShellProcess {
  readonly #child: Deno.ChildProcess;
  readonly #graceMs: number;
  #stderr = new Uint8Array(0);
  #stopping = false;
  #stderrReader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  #exitStatus: Deno.CommandStatus | undefined;
  readonly #stderrDone: Promise<void>;
  /** Resolves with the shell's exit status once it exited and was reaped. */
  readonly status: Promise<Deno.CommandStatus>;

  /**
   * Spawns `sh -c command`. Throws (synchronously) if `sh` cannot be started,
   * e.g. without the run permission.
   */
  constructor(readonly command: string, options: ShellOptions) {
    this.#graceMs = options.killGraceMs ?? KILL_GRACE_MS;
    this.#child = spawnInOwnSession(command, options);
    this.#stderrDone = this.#collectStderr();
    this.status = this.#child.status.then((status) => {
      this.#exitStatus = status;
      return status;
    });
  }

  /** The shell's pid, which is also the id of the command's process group. */
  get pid(): number {
    return this.#child.pid;
  }

  /** The command's stdin (only with `stdin: "piped"`). */
  get stdin(): WritableStream<Uint8Array> {
    return this.#child.stdin;
  }

  /** The command's stdout (only with `stdout: "piped"`). */
  get stdout(): ReadableStream<Uint8Array> {
    return this.#child.stdout;
  }

  /** The exit status once the shell was reaped; undefined while it runs. */
  get exitStatus(): Deno.CommandStatus | undefined {
    return this.#exitStatus;
  }

  async #collectStderr(): Promise<void> {
    const reader = this.#child.stderr.getReader();
    this.#stderrReader = reader;
    try {
      for (;;) {
        const { value: chunk, done } = await reader.read();
        if (done) break;
        const joined = new Uint8Array(this.#stderr.length + chunk.length);
        joined.set(this.#stderr);
        joined.set(chunk, this.#stderr.length);
        this.#stderr = joined.length > STDERR_KEEP_BYTES
          ? joined.slice(joined.length - STDERR_KEEP_BYTES)
          : joined;
      }
    } catch {
      // The pipe was cancelled: what was read so far is the tail.
    } finally {
      reader.releaseLock();
    }
  }

  /**
   * The last lines the command wrote to stderr: at most {@link STDERR_TAIL_LINES}
   * non-empty lines and {@link STDERR_TAIL_CHARS} characters, joined with " | ".
   * Waits briefly for the stderr pipe to drain first.
   */
  async stderrTail(): Promise<string> {
    await settlesWithin(this.#stderrDone, STDERR_DRAIN_MS);
    const text = new TextDecoder().decode(this.#stderr);
    const lines = text.split(/\r?\n/).map((l) => l.trimEnd()).filter((l) => l !== "");
    let tail = lines.slice(-STDERR_TAIL_LINES).join(" | ");
    if (tail.length > STDERR_TAIL_CHARS) tail = "…" + tail.slice(-(STDERR_TAIL_CHARS - 1));
    return tail;
  }

  /**
   * A sentence for an error message: `exited with status 3`, `was killed by
   * SIGKILL`, then `context`, then the stderr tail when there is one.
   */
  async describeExit(status: Deno.CommandStatus, context = ""): Promise<string> {
    const how =
      (status.signal ? `was killed by ${status.signal}` : `exited with status ${status.code}`) +
      context;
    const tail = await this.stderrTail();
    return tail ? `${how}; stderr: ${tail}` : `${how} (no stderr output)`;
  }

  /**
   * Stops the command: SIGTERM to its whole process group, then SIGKILL to the
   * group once the shell is gone or {@link KILL_GRACE_MS} passed, whichever comes
   * first — so nothing the command started outlives it. Releases ferry's ends of
   * the pipes. Idempotent; {@link status} resolves once the shell is reaped.
   */
  stop(): void {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#signalGroup("SIGTERM");
    const timer = setTimeout(() => this.#signalGroup("SIGKILL"), this.#graceMs);
    this.status.finally(() => {
      clearTimeout(timer);
      // The shell is gone; whatever is left of its group is an orphan.
      this.#signalGroup("SIGKILL");
    });
    this.#release();
  }

  /**
   * Resolves once the shell was reaped and ferry's pipe ends are released. A
   * stderr pipe still held open by something that left the group is cancelled.
   */
  async stopped(): Promise<void> {
    await this.status;
    if (!(await settlesWithin(this.#stderrDone, STDERR_DRAIN_MS))) {
      await this.#stderrReader?.cancel().catch(() => {});
    }
    await this.#stderrDone;
  }

  #signalGroup(signal: Deno.Signal): void {
    try {
      Deno.kill(-this.#child.pid, signal);
    } catch {
      // ESRCH: nothing of the group is left.
    }
  }

  /** Cancels the pipes ferry still holds, so no resource outlives the command. */
  #release(): void {
    const ignore = () => {};
    try {
      if (!this.#child.stdin.locked) this.#child.stdin.abort().catch(ignore);
    } catch {
      // "null" stdin: there is no pipe.
    }
    try {
      if (!this.#child.stdout.locked) this.#child.stdout.cancel().catch(ignore);
    } catch {
      // "null" stdout: there is no pipe.
    }
    // stderr keeps draining until the group is dead, so the tail stays complete.
  }
}

/** Waits for `promise` at most `ms`; true if it settled in time. The timer is always cleared. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const settled = await Promise.race([
    promise.then(() => true, () => true),
    new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), ms)),
  ]);
  clearTimeout(timer);
  return settled;
}
