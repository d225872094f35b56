/**
 * A guest's console output kept as text, with promises for what it will print: how
 * a test or a tool waits on the guest (its first tick, a shell's answer) by events
 * rather than by time. Bytes become characters one to one (Latin-1).
 */

/** A waiter: its matcher and how to settle it. */
interface Waiter {
  readonly match: (text: string) => unknown;
  readonly resolve: (value: unknown) => void;
}

/** Accumulates console bytes; see {@link ConsoleLog.waitFor}. */
export class ConsoleLog {
  #text = "";
  #waiters: Waiter[] = [];
  #checkQueued = false;

  /** Everything received so far. */
  get text(): string {
    return this.#text;
  }

  /** Appends one byte (the shape of {@link X86Machine.onConsole}'s listener). */
  readonly push = (byte: number): void => {
    this.#text += String.fromCharCode(byte);
    this.#queueCheck();
  };

  /** Appends several bytes. */
  append(bytes: Uint8Array): void {
    for (const byte of bytes) this.#text += String.fromCharCode(byte);
    this.#queueCheck();
  }

  /**
   * Resolves with `match(text)` as soon as it returns something other than
   * `undefined`, `null` or `false`: now, or after some later bytes arrive (checked
   * once per burst of bytes, not per byte). Never times out: wrap it in a guard.
   */
  waitFor<T>(match: (text: string) => T | undefined | null | false): Promise<T> {
    const now = match(this.#text);
    if (now !== undefined && now !== null && now !== false) return Promise.resolve(now);
    return new Promise<T>((resolve) => {
      this.#waiters.push({ match, resolve: resolve as (value: unknown) => void });
    });
  }

  #queueCheck(): void {
    if (this.#checkQueued || this.#waiters.length === 0) return;
    this.#checkQueued = true;
    queueMicrotask(() => {
      this.#checkQueued = false;
      const waiting = this.#waiters;
      this.#waiters = [];
      for (const waiter of waiting) {
        const value = waiter.match(this.#text);
        if (value !== undefined && value !== null && value !== false) waiter.resolve(value);
        else this.#waiters.push(waiter);
      }
    });
  }
}
