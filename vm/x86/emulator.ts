/**
 * A headless x86 PC for migration: the v86 emulator booting a kernel and initrd,
 * with its serial console, its guest RAM, and its device state without RAM (so RAM
 * can move page by page while the rest moves as one blob). Usable inside a Worker.
 *
 * Every use of a v86 internal (anything outside its documented API: `v86`, `cpu`,
 * `mem8`, `wasm_memory`, `memory_size`, `is_memory_zeroed`, `unpack_memory`,
 * `full_clear_tlb`, `jit_clear_cache` and the state header) lives in this file, written against npm
 * v86 0.5.462 ({@link V86_VERSION}), whose state format is version 6.
 */
import { V86 } from "v86";
import { VmError } from "../error.ts";

/** The pinned v86 version this module's internals are written against. */
export const V86_VERSION = "0.5.462";

/** v86's state header: magic, format version, total length, info-block length (int32 LE). */
const V86_STATE_MAGIC = 0x86768676;
/** The state format version of v86 0.5.462. */
const V86_STATE_VERSION = 6;
const V86_STATE_HEADER_BYTES = 16;

/** Guest RAM granularity v86 rounds to (128 KiB); ferry asks for whole MiB. */
const MiB = 1024 * 1024;
/** Smallest RAM v86 gives a machine booting an initrd (it rounds smaller sizes up). */
export const X86_MIN_MEMORY_BYTES = 64 * MiB;
/** Largest RAM v86 supports (2 GiB less 128 KiB, rounded down to whole MiB). */
export const X86_MAX_MEMORY_BYTES = 2047 * MiB;

/**
 * VGA memory: v86's smallest (256 KiB). The guest talks over serial; v86's default
 * 8 MiB would travel in every device state (about 9 MB instead of about 1.3 MB).
 */
const VGA_MEMORY_BYTES = 256 * 1024;

/** How to build an {@link X86Machine}. */
export interface X86MachineOptions {
  /** Guest RAM in bytes: whole MiB, {@link X86_MIN_MEMORY_BYTES} to {@link X86_MAX_MEMORY_BYTES}. */
  readonly memoryBytes: number;
  /** The BIOS image (SeaBIOS `bios.bin`). A migration's two ends must use the same one. */
  readonly bios: Uint8Array;
  /** A Linux bzImage to boot; absent on a migration destination, whose RAM comes from the source. */
  readonly kernel?: Uint8Array;
  /** The initrd for `kernel`. */
  readonly initrd?: Uint8Array;
  /** The kernel command line. */
  readonly append?: string;
  /** Start the CPU once loaded (default true); false leaves it stopped, e.g. to load state first. */
  readonly start?: boolean;
}

/** The parts of v86's CPU object this module touches (internals of 0.5.462). */
interface V86Cpu {
  /** Not shared, so its buffer is a plain ArrayBuffer only this thread can read. */
  wasm_memory: WebAssembly.Memory;
  mem8: Uint8Array;
  memory_size: Uint32Array;
  is_memory_zeroed: (addr: number, length: number) => boolean;
  /** Called by restore_state: zeroes RAM, then writes the state's packed pages. */
  unpack_memory: (bitmap: unknown, packed: Uint8Array) => void;
  full_clear_tlb: () => void;
  jit_clear_cache: () => void;
}

/** The emulator object behind v86's public `V86` (internal in 0.5.462). */
interface V86Internal {
  cpu: V86Cpu;
  restore_state(state: ArrayBuffer): void;
}

let wasmModule: Promise<WebAssembly.Module> | undefined;

/** v86's wasm, compiled once per thread and shared by every machine in it. */
function v86Wasm(): Promise<WebAssembly.Module> {
  wasmModule ??= (async () => {
    // v86 looks for its wasm next to the calling script unless told; ferry hands it
    // the module from the npm package instead.
    const url = new URL("v86.wasm", import.meta.resolve("v86"));
    return await WebAssembly.compile(await Deno.readFile(url));
  })();
  return wasmModule;
}

/** `bytes` as an ArrayBuffer of exactly its length, copied only when it is a partial view. */
function exactBuffer(bytes: Uint8Array): ArrayBuffer {
  if (
    bytes.buffer instanceof ArrayBuffer && bytes.byteOffset === 0 &&
    bytes.byteLength === bytes.buffer.byteLength
  ) {
    return bytes.buffer;
  }
  return bytes.slice().buffer;
}

/**
 * Reads the RAM size a v86 state was saved with; throws {@link VmError}
 * `invalid-device-state` if the bytes are not an uncompressed v86 state of version 6.
 */
export function v86StateMemoryBytes(bytes: Uint8Array): number {
  const bad = (why: string) =>
    new VmError("invalid-device-state", `not a v86 ${V86_VERSION} state: ${why}`);
  if (bytes.length < V86_STATE_HEADER_BYTES) throw bad(`${bytes.length} bytes`);
  const header = new DataView(bytes.buffer, bytes.byteOffset, V86_STATE_HEADER_BYTES);
  if (header.getUint32(0, true) !== V86_STATE_MAGIC) throw bad("bad magic");
  const version = header.getInt32(4, true);
  if (version !== V86_STATE_VERSION) {
    throw bad(`format version ${version}, not ${V86_STATE_VERSION}`);
  }
  if (header.getInt32(8, true) !== bytes.length) throw bad("length does not match its header");
  const infoLength = header.getInt32(12, true);
  if (infoLength <= 0 || V86_STATE_HEADER_BYTES + infoLength > bytes.length) {
    throw bad("bad info block length");
  }
  let info: unknown;
  try {
    const text = new TextDecoder().decode(
      bytes.subarray(V86_STATE_HEADER_BYTES, V86_STATE_HEADER_BYTES + infoLength),
    );
    info = JSON.parse(text);
  } catch {
    throw bad("info block is not JSON");
  }
  // The CPU's state is an array whose element 0 is the RAM size.
  const state = (info as { state?: unknown }).state;
  const size = Array.isArray(state) ? state[0] : undefined;
  if (typeof size !== "number" || !Number.isInteger(size) || size <= 0) throw bad("no RAM size");
  return size;
}

/**
 * One emulated PC. Create with {@link X86Machine.create}; while it is stopped, a
 * migration reads {@link ram} and {@link saveDevices} on the source, and calls
 * {@link loadDevices}, writes pages into {@link ram}, then {@link run} on the destination.
 */
export class X86Machine {
  readonly #emulator: V86;
  readonly #cpu: V86Cpu;
  readonly #ramOffset: number;
  #ramView: Uint8Array<ArrayBuffer> | undefined;
  #closed = false;
  /** Set when the CPU stopped: RAM may be written behind its TLB and JIT before the next run. */
  #stale = false;

  private constructor(
    emulator: V86,
    /** Guest RAM in bytes. */
    readonly memoryBytes: number,
  ) {
    this.#emulator = emulator;
    this.#cpu = (emulator as unknown as { v86: V86Internal }).v86.cpu;
    if (this.#cpu.memory_size[0] !== memoryBytes) {
      throw new VmError(
        "invalid-argument",
        `v86 made ${this.#cpu.memory_size[0]} bytes of RAM, not ${memoryBytes}`,
      );
    }
    this.#ramOffset = this.#cpu.mem8.byteOffset; // mem8 is a proxy making a fresh view per access
    emulator.add_listener("emulator-stopped", () => {
      this.#stale = true;
    });
  }

  /** Builds a machine and resolves once v86 has loaded it (and started it, unless `start: false`). */
  static async create(options: X86MachineOptions): Promise<X86Machine> {
    const { memoryBytes } = options;
    if (
      !Number.isInteger(memoryBytes) || memoryBytes % MiB !== 0 ||
      memoryBytes < X86_MIN_MEMORY_BYTES || memoryBytes > X86_MAX_MEMORY_BYTES
    ) {
      throw new VmError(
        "invalid-argument",
        `memoryBytes ${memoryBytes}: need whole MiB from ${X86_MIN_MEMORY_BYTES} to ${X86_MAX_MEMORY_BYTES}`,
      );
    }
    // v86 fails inside its own callbacks on an empty image, where no caller can catch it.
    for (const [name, bytes] of Object.entries({ bios: options.bios, kernel: options.kernel })) {
      if (bytes !== undefined && bytes.length === 0) {
        throw new VmError("invalid-argument", `the ${name} image is empty`);
      }
    }
    if (options.initrd && !options.kernel) {
      throw new VmError("invalid-argument", "an initrd needs a kernel");
    }
    const module = await v86Wasm();
    const emulator = new V86({
      memory_size: memoryBytes,
      wasm_fn: async (imports: WebAssembly.Imports) =>
        (await WebAssembly.instantiate(module, imports)).exports,
      bios: { buffer: exactBuffer(options.bios) },
      ...(options.kernel ? { bzimage: { buffer: exactBuffer(options.kernel) } } : {}),
      ...(options.initrd ? { initrd: { buffer: exactBuffer(options.initrd) } } : {}),
      ...(options.append !== undefined ? { cmdline: options.append } : {}),
      autostart: options.start ?? true,
      vga_memory_size: VGA_MEMORY_BYTES,
    });
    await new Promise<void>((resolve) => {
      const loaded = () => {
        emulator.remove_listener("emulator-loaded", loaded);
        resolve();
      };
      emulator.add_listener("emulator-loaded", loaded);
    });
    try {
      return new X86Machine(emulator, memoryBytes);
    } catch (e) {
      await emulator.destroy();
      throw e;
    }
  }

  #open(): void {
    if (this.#closed) throw new VmError("closed", "the x86 machine was destroyed");
  }

  #stopped(what: string): void {
    this.#open();
    if (this.running) throw new VmError("invalid-run-state", `${what} needs the machine stopped`);
  }

  /** Whether the CPU is running. */
  get running(): boolean {
    return !this.#closed && this.#emulator.is_running();
  }

  /** Calls `listener` with each byte the guest writes to its first serial port; returns an unsubscribe. */
  onConsole(listener: (byte: number) => void): () => void {
    this.#open();
    const forward = (byte: number) => listener(byte);
    this.#emulator.add_listener("serial0-output-byte", forward);
    return () => this.#emulator.remove_listener("serial0-output-byte", forward);
  }

  /** Types `text` (one byte per UTF-16 code unit, so ASCII) into the first serial port. */
  sendConsole(text: string): void {
    this.#open();
    this.#emulator.serial0_send(text);
  }

  /** Stops the CPU; resolves once it has stopped. Stopping a stopped machine does nothing. */
  async stop(): Promise<void> {
    this.#open();
    await this.#emulator.stop();
  }

  /**
   * Starts (or resumes) the CPU. After a stop it first drops the CPU's TLB and JIT
   * caches, since RAM may have been written through {@link ram} meanwhile.
   */
  async run(): Promise<void> {
    this.#open();
    if (this.running) return;
    if (this.#stale) {
      this.#cpu.full_clear_tlb();
      this.#cpu.jit_clear_cache();
      this.#stale = false;
    }
    await this.#emulator.run();
  }

  /**
   * Guest physical RAM from address 0, {@link memoryBytes} long: a view into v86's
   * wasm memory, remade when that memory has grown. Only this thread can read it;
   * read or write it only while the machine is stopped to see a consistent state.
   */
  ram(): Uint8Array<ArrayBuffer> {
    this.#open();
    const buffer = this.#cpu.wasm_memory.buffer as ArrayBuffer;
    if (this.#ramView === undefined || this.#ramView.buffer !== buffer) {
      this.#ramView = new Uint8Array(buffer, this.#ramOffset, this.memoryBytes);
    }
    return this.#ramView;
  }

  /**
   * The emulator's WebAssembly memory and where guest physical address 0 sits in
   * it, for kernels that read guest RAM in place (the x86 guest's page sync).
   */
  memory(): { readonly memory: WebAssembly.Memory; readonly offset: number } {
    this.#open();
    return { memory: this.#cpu.wasm_memory, offset: this.#ramOffset };
  }

  /**
   * Everything but RAM (CPU registers, devices, timers) as v86 state bytes, a few
   * MB. The machine must be stopped.
   */
  async saveDevices(): Promise<Uint8Array<ArrayBuffer>> {
    this.#stopped("saveDevices");
    // v86 packs only the RAM pages it sees as non-zero; seeing none, it packs no RAM.
    const cpu = this.#cpu;
    const isMemoryZeroed = cpu.is_memory_zeroed;
    cpu.is_memory_zeroed = () => true;
    try {
      return new Uint8Array(await this.#emulator.save_state());
    } finally {
      cpu.is_memory_zeroed = isMemoryZeroed;
    }
  }

  /**
   * Loads device state from {@link saveDevices} of a machine with the same RAM size
   * and BIOS. RAM is left as it is: v86 would zero it and unpack the RAM pages of
   * the state, but these states carry none, and a crafted one must not write RAM
   * behind the migration's back. `ram` (the source's whole RAM) is then written if
   * given, else the caller makes {@link ram} right before {@link run}. The machine
   * must be stopped. Throws {@link VmError} `invalid-device-state` on bytes that are
   * not such a state, before changing anything.
   */
  loadDevices(bytes: Uint8Array, ram?: Uint8Array): void {
    this.#stopped("loadDevices");
    const size = v86StateMemoryBytes(bytes);
    if (size !== this.memoryBytes) {
      throw new VmError(
        "invalid-device-state",
        `the device state is of a machine with ${size} bytes of RAM, this one has ${this.memoryBytes}`,
      );
    }
    if (ram !== undefined && ram.length !== this.memoryBytes) {
      throw new VmError("invalid-argument", `ram is ${ram.length} bytes, not ${this.memoryBytes}`);
    }
    const internal = (this.#emulator as unknown as { v86: V86Internal }).v86;
    const cpu = this.#cpu;
    const unpackMemory = cpu.unpack_memory;
    cpu.unpack_memory = () => {};
    try {
      internal.restore_state(exactBuffer(bytes));
    } catch (e) {
      throw new VmError("invalid-device-state", `v86 rejected the device state: ${e}`);
    } finally {
      cpu.unpack_memory = unpackMemory;
    }
    if (ram !== undefined) this.ram().set(ram);
    this.#stale = true;
  }

  /** Stops the machine and frees it; later calls throw {@link VmError} `closed`. */
  async destroy(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#emulator.destroy();
  }

  /** {@link destroy}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}
