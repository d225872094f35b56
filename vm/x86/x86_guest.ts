/**
 * The x86 guest: a PC running Linux under v86 in a worker ({@link ./worker.ts}),
 * seen by the engine as any other {@link Guest} (docs/ARCHITECTURE.md, "The x86
 * guest"). Its RAM travels as block `pc.ram`, read from and written to a copy the
 * worker keeps in step with the emulator's memory; its device state travels in the
 * `x86` section; its serial console is kept in a {@link ConsoleBuffer}.
 * @module
 */
import { ConsoleBuffer } from "../console_buffer.ts";
import { digestBlocks, type RamDigest } from "../digest.ts";
import { VmError } from "../error.ts";
import type { DeviceField, Guest, MachineDevices, MachineState, RunState } from "../guest.ts";
import { checkSetRunState, checkStopTarget, checkThrottle, notifyRunState } from "../run_state.ts";
import { PAGE_SIZE, RamBlock } from "../ram.ts";
import type { VmInfo } from "../vm.ts";
import {
  V86_VERSION,
  v86StateMemoryBytes,
  X86_MAX_MEMORY_BYTES,
  X86_MIN_MEMORY_BYTES,
} from "./emulator.ts";
import {
  ACK_FAILED,
  type FromX86Worker,
  type ToX86Worker,
  X86_CTL,
  X86_CTL_WORDS,
  type X86Command,
} from "./protocol.ts";

/** The emulator version both ends of an x86 migration must run. */
export const X86_MACHINE_VERSION = `v86 ${V86_VERSION}`;

/** How long a stop, run or sync may take before the emulator counts as hung (a hang guard). */
const COMMAND_TIMEOUT_MS = 60_000;

/** How long close() lets the worker destroy its machine before terminating it. */
const EXIT_TIMEOUT_MS = 2000;

/**
 * How often pages an incoming stream wrote into the RAM copy are handed to the
 * emulator during pre-copy, so that the load at switchover copies only the last
 * ones. Correctness does not depend on it: the load copies whatever is left.
 */
const PULL_INTERVAL_MS = 20;

/** Where v86 loads an initrd in guest RAM. */
const INITRD_ADDRESS = 64 << 20;

/** Console output kept for replay and carried to a migration's destination. */
export const CONSOLE_HISTORY_BYTES = 64 * 1024;

/** Options of {@link X86Guest.create}. */
export interface X86GuestOptions {
  /** Guest RAM in bytes: whole MiB, 64 MiB to 2047 MiB. */
  readonly ramSize: number;
  /** SeaBIOS `bios.bin`; both ends of a migration must use the same one. */
  readonly bios: Uint8Array;
  /** A Linux bzImage, booted on the first start; absent, the guest can only be migrated in. */
  readonly kernel?: Uint8Array;
  readonly initrd?: Uint8Array;
  /** The kernel command line. */
  readonly append?: string;
  /**
   * Fault the emulator's RAM and its copy in at creation (default true), as a
   * destination must: first touches would otherwise land in a migration's
   * downtime. Costs twice the guest's RAM in resident memory from the start.
   */
  readonly prefault?: boolean;
}

type Listener = (from: RunState, to: RunState) => void;

/** The x86 guest. Create with {@link X86Guest.create}; close it to end the worker. */
export class X86Guest implements Guest, MachineDevices, AsyncDisposable {
  readonly blocks: readonly RamBlock[];
  /** The synthetic vCPU's section is not this guest's: it has none of those fields. */
  readonly deviceFields: readonly DeviceField[] = [];
  readonly version = X86_MACHINE_VERSION;
  /** No disk yet: block migration is the synthetic guest's. */
  readonly disk: undefined = undefined;
  /** Recent serial console output. */
  readonly console = new ConsoleBuffer(CONSOLE_HISTORY_BYTES);
  readonly #worker: Worker;
  readonly #ctl: Int32Array;
  readonly #listeners = new Set<Listener>();
  readonly #requests = new Map<number, { resolve: (m: FromX86Worker) => void }>();
  #runState: RunState = "prelaunch";
  #seq = 0;
  #requestId = 0;
  #failure: string | null = null;
  #closed = false;
  #throttle = 0;
  /** True once the machine has run or loaded a state: v86 cannot restore the state of one that never ran. */
  #initialized = false;
  #exited: (() => void) | undefined;
  /** Hands received pages to the emulator ({@link PULL_INTERVAL_MS}). */
  readonly #pullTimer: ReturnType<typeof setInterval>;
  /**
   * True from the first pull to the load: the copy holds received pages the
   * emulator does not, so a refresh (emulator → copy) must not run.
   */
  #receiving = false;

  get machine(): MachineDevices {
    return this;
  }

  private constructor(block: RamBlock, worker: Worker, ctl: Int32Array) {
    this.blocks = [block];
    this.#worker = worker;
    this.#ctl = ctl;
    block.setRefresh(() => this.#syncRam());
    block.trackWrites();
    this.#pullTimer = setInterval(() => this.#pull(), PULL_INTERVAL_MS);
    worker.onmessage = (event: MessageEvent<FromX86Worker>) => this.#receive(event.data);
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.#fail(event.message);
    };
  }

  /**
   * Starts the emulator worker with a stopped machine; the kernel boots on the
   * first {@link start}. Throws VmError `invalid-argument` for a RAM size v86
   * cannot give exactly, `emulator-failed` if the worker cannot start.
   */
  static async create(options: X86GuestOptions): Promise<X86Guest> {
    const { ramSize } = options;
    if (
      !Number.isInteger(ramSize) || ramSize % (1 << 20) !== 0 ||
      ramSize < X86_MIN_MEMORY_BYTES || ramSize > X86_MAX_MEMORY_BYTES
    ) {
      throw new VmError(
        "invalid-argument",
        `The x86 guest needs whole MiB of RAM from ${X86_MIN_MEMORY_BYTES >> 20} MiB to ${
          X86_MAX_MEMORY_BYTES >> 20
        } MiB, not ${ramSize} bytes`,
      );
    }
    // v86 puts the initrd at 64 MiB: RAM must hold it above that.
    const initrdTop = INITRD_ADDRESS +
      Math.ceil((options.initrd?.length ?? 0) / (1 << 20)) * (1 << 20);
    if (options.initrd && ramSize <= initrdTop) {
      throw new VmError(
        "invalid-argument",
        `The x86 guest loads its initrd at 64 MiB: with this ${
          Math.ceil(options.initrd.length / (1 << 20))
        } MiB initrd it needs more than ${initrdTop >> 20} MiB of RAM`,
      );
    }
    const block = new RamBlock("pc.ram", ramSize);
    if (block.memory === null) {
      throw new VmError("invalid-argument", "This engine cannot hold guest RAM in shared memory");
    }
    const prefault = options.prefault ?? true;
    if (prefault) block.prefault();
    const control = new SharedArrayBuffer(X86_CTL_WORDS * 4);
    const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    try {
      await new Promise<void>((resolve, reject) => {
        worker.onmessage = (event: MessageEvent<FromX86Worker>) => {
          if (event.data.type === "ready") resolve();
          else if (event.data.type === "error") {
            reject(
              new VmError("emulator-failed", `x86 emulator failed to start: ${event.data.message}`),
            );
          }
        };
        worker.onerror = (event: ErrorEvent) => {
          event.preventDefault();
          reject(new VmError("emulator-failed", `x86 emulator failed to start: ${event.message}`));
        };
        const init: ToX86Worker = {
          type: "init",
          control,
          ram: { ...block.shared, memory: block.memory! },
          prefault,
          machine: {
            memoryBytes: ramSize,
            bios: options.bios,
            ...(options.kernel ? { kernel: options.kernel } : {}),
            ...(options.initrd ? { initrd: options.initrd } : {}),
            ...(options.append !== undefined ? { append: options.append } : {}),
          },
        };
        worker.postMessage(init);
      });
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return new X86Guest(block, worker, new Int32Array(control));
  }

  get runState(): RunState {
    return this.#runState;
  }

  /** Guest RAM in bytes. */
  get ramSize(): number {
    return this.blocks[0].length;
  }

  /** Throttle percentage (0-99). */
  get throttle(): number {
    return this.#throttle;
  }

  /** True once closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Starts (the first time: boots) or resumes the emulator; the run state becomes `running`. */
  start(): void {
    this.#assertOpen("start");
    // Pages of a failed incoming stream are not this guest's: the emulator's RAM is.
    this.blocks[0].takeWritten();
    this.#receiving = false;
    this.#command("run");
    this.#initialized = true;
    this.#setState("running");
  }

  /** Stops the emulator, returning once it has stopped, then sets the run state to `next`. */
  stop(next: RunState = "paused"): void {
    checkStopTarget(next);
    if (!this.#closed && this.#failure === null) this.#command("stop");
    this.#setState(next);
  }

  setRunState(state: RunState): void {
    checkSetRunState(this.#runState, state);
    this.#setState(state);
  }

  /** The share (integer 0-99 %) of the time the emulator does not run. */
  setThrottle(percent: number): void {
    this.#assertOpen("throttle");
    checkThrottle(percent);
    this.#throttle = percent;
    this.#post({ type: "throttle", percent });
  }

  onRunStateChange(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** A machine that never ran has devices v86 cannot restore elsewhere: start it first. */
  migrationBlocker(): string | null {
    return this.#initialized
      ? null
      : "the x86 guest has never run: start it (POST /vm/start) before migrating it";
  }

  /** Not this guest's: its devices travel through {@link machine}. */
  saveDeviceState(): Uint8Array {
    throw new VmError("unsupported", "The x86 guest's device state travels in the x86 section");
  }

  /** Not this guest's: its devices travel through {@link machine}. */
  loadDeviceState(_bytes: Uint8Array): void {
    throw new VmError("unsupported", "The x86 guest's device state travels in the x86 section");
  }

  /**
   * Types `text` into the serial console. Only while running: input typed into a
   * stopped machine could be lost to a migration that has taken its state.
   */
  sendConsole(text: string): void {
    this.#assertOpen("type into");
    if (this.#runState !== "running") {
      throw new VmError(
        "invalid-run-state",
        `The guest is ${this.#runState}: console input needs it running`,
      );
    }
    this.#post({ type: "input", text });
  }

  // MachineDevices: the `x86` section's state.

  async save(): Promise<MachineState> {
    this.#assertOpen("save the state of");
    const reply = await this.#request((id) => ({ type: "save", id }));
    if (reply.type !== "saved") throw this.#replyError(reply, "save device state");
    const { bytes, offset } = this.console.tail();
    return { devices: reply.devices, console: bytes, consoleOffset: offset };
  }

  check(devices: Uint8Array): void {
    const size = v86StateMemoryBytes(devices);
    if (size !== this.ramSize) {
      throw new VmError(
        "invalid-device-state",
        `the device state is of a machine with ${size} bytes of RAM, this one has ${this.ramSize}`,
      );
    }
  }

  async load(state: MachineState): Promise<void> {
    this.#assertOpen("load state into");
    if (this.#runState === "running") {
      throw new VmError("invalid-run-state", "Cannot load device state while the guest is running");
    }
    this.check(state.devices);
    const devices = state.devices.slice();
    const pages = this.blocks[0].takeWritten();
    const reply = await this.#request(
      (id) => ({ type: "load", id, devices, pages }),
      pages === null ? [devices.buffer] : [devices.buffer, pages.buffer],
    );
    if (reply.type !== "loaded") throw this.#replyError(reply, "load device state");
    this.#receiving = false;
    this.#initialized = true;
    this.console.restore(state.console, state.consoleOffset);
  }

  /** SHA-256 of guest RAM as of now (stop the guest first for a stable answer). */
  digest(): Promise<RamDigest> {
    this.#assertOpen("digest");
    this.blocks[0].refresh();
    return digestBlocks(this.blocks);
  }

  /** Plain JSON description for `GET /vm`. */
  info(): VmInfo {
    return {
      guest: "x86",
      run_state: this.#runState,
      ram_size: this.ramSize,
      page_size: PAGE_SIZE,
      workload: "linux",
      throttle: this.#throttle,
      ops: null,
    };
  }

  /** Ends the emulator worker. Idempotent; the run state is left as is. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#pullTimer);
    this.blocks[0].setRefresh(null);
    for (const { resolve } of this.#requests.values()) {
      resolve({ type: "failed", id: -1, message: "the guest was closed", code: "closed" });
    }
    this.#requests.clear();
    this.#listeners.clear();
    if (this.#failure === null) {
      // The worker destroys its machine and says so; a hung one is terminated anyway.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#exited = resolve;
        timer = setTimeout(resolve, EXIT_TIMEOUT_MS);
        this.#post({ type: "exit" });
      });
      clearTimeout(timer);
    }
    this.#worker.terminate();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #receive(message: FromX86Worker): void {
    switch (message.type) {
      case "console":
        this.console.append(message.bytes);
        return;
      case "saved":
      case "loaded":
      case "failed": {
        const request = this.#requests.get(message.id);
        this.#requests.delete(message.id);
        request?.resolve(message);
        return;
      }
      case "exited":
        this.#exited?.();
        return;
      case "error":
        this.#fail(message.message);
        return;
      case "ready":
        return;
    }
  }

  #fail(message: string): void {
    if (this.#failure !== null) return;
    this.#failure = message;
    for (const [id, { resolve }] of this.#requests) {
      resolve({ type: "failed", id, message, code: "emulator-failed" });
    }
    this.#requests.clear();
  }

  #post(message: ToX86Worker, transfer: Transferable[] = []): void {
    this.#worker.postMessage(message, transfer);
  }

  #request(
    make: (id: number) => ToX86Worker,
    transfer: Transferable[] = [],
  ): Promise<FromX86Worker> {
    if (this.#failure !== null) {
      return Promise.reject(
        new VmError("emulator-failed", `The x86 emulator failed: ${this.#failure}`),
      );
    }
    const id = ++this.#requestId;
    return new Promise((resolve) => {
      this.#requests.set(id, { resolve });
      this.#post(make(id), transfer);
    });
  }

  #replyError(reply: FromX86Worker, what: string): VmError {
    const r = reply as { message?: string; code?: string };
    const code = r.code === "invalid-device-state" || r.code === "closed"
      ? r.code
      : "emulator-failed";
    return new VmError(code, `Cannot ${what}: ${r.message ?? "no answer"}`);
  }

  /** Sends a command and waits (blocking this thread) until the worker has carried it out. */
  #command(command: X86Command): void {
    if (this.#failure !== null) {
      throw new VmError("emulator-failed", `The x86 emulator failed: ${this.#failure}`);
    }
    const seq = this.#seq = (this.#seq % 0x3fffffff) + 1;
    this.#post({ type: "command", seq, command });
    const ctl = this.#ctl;
    const deadline = performance.now() + COMMAND_TIMEOUT_MS;
    for (;;) {
      const seen = Atomics.load(ctl, X86_CTL.ACK);
      if (seen === seq) return;
      if (seen === ACK_FAILED) {
        this.#failure ??= "the emulator stopped answering";
        throw new VmError("emulator-failed", `The x86 emulator failed during ${command}`);
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        this.#fail(`no answer to ${command} within ${COMMAND_TIMEOUT_MS / 1000} s`);
        throw new VmError(
          "emulator-failed",
          `The x86 emulator did not ${command} within ${COMMAND_TIMEOUT_MS / 1000} s`,
        );
      }
      Atomics.wait(ctl, X86_CTL.ACK, seen, Math.min(left, 100));
    }
  }

  /**
   * The block's refresh: the worker copies the emulator's changed pages in and marks
   * them dirty. Not while a stream is being received (the copy is ahead of the
   * emulator then), nor before the machine first ran or loaded a state (its
   * emulator RAM holds only what v86 put there at creation; the copy is the guest's).
   */
  #syncRam(): void {
    if (this.#closed || this.#failure !== null || !this.#initialized) return;
    if (this.#receiving || this.blocks[0].written?.some((w) => w !== 0)) return;
    this.#command("sync");
  }

  /** Hands the pages an incoming stream wrote since the last pull to the emulator. */
  #pull(): void {
    if (this.#closed || this.#failure !== null) return;
    const pages = this.blocks[0].takeWritten();
    if (pages === null) return;
    this.#receiving = true;
    this.#post({ type: "pull", pages }, [pages.buffer]);
  }

  #setState(to: RunState): void {
    const from = this.#runState;
    if (from === to) return;
    this.#runState = to;
    notifyRunState(this.#listeners, from, to);
  }

  #assertOpen(what: string): void {
    if (this.#closed) throw new VmError("closed", `Cannot ${what} the guest: it is closed`);
    if (this.#failure !== null) {
      throw new VmError("emulator-failed", `Cannot ${what} the guest: ${this.#failure}`);
    }
  }
}
