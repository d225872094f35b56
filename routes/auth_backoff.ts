/** Tunables of {@link AuthBackoff}; the defaults suit the API. */
export interface AuthBackoffOptions {
  /** Time source in ms: the engine's clock (tests inject a fake one). */
  readonly now: () => number;
  /** Lockout after the first failure (default 100 ms); each further one doubles it. */
  readonly baseMs?: number;
  /** Longest lockout (default 30 s). */
  readonly maxMs?: number;
  /** Each this long without a failure halves the failure count (default 60 s). */
  readonly quietMs?: number;
  /** Addresses remembered at most (default 4096; the quietest are forgotten first). */
  readonly maxEntries?: number;
}

interface Entry {
  failures: number;
  last: number;
  until: number;
}

/**
 * Failed authentications per remote address: each failure locks the address out
 * for twice as long as the one before (100 ms, 200 ms, … up to 30 s), and quiet
 * time makes it forget them again. Holds no tokens, only counts and times.
 */
export class AuthBackoff {
  readonly #now: () => number;
  readonly #base: number;
  readonly #max: number;
  readonly #quiet: number;
  readonly #maxEntries: number;
  /** In order of last failure, oldest first. */
  readonly #entries = new Map<string, Entry>();

  constructor(opts: AuthBackoffOptions) {
    this.#now = opts.now;
    this.#base = opts.baseMs ?? 100;
    this.#max = opts.maxMs ?? 30_000;
    this.#quiet = opts.quietMs ?? 60_000;
    this.#maxEntries = opts.maxEntries ?? 4096;
  }

  /** Milliseconds left in `address`'s lockout; 0 when it is not locked out. */
  lockedFor(address: string): number {
    const entry = this.#entries.get(address);
    return entry ? Math.max(0, entry.until - this.#now()) : 0;
  }

  /** Failures counted for `address` now (after decay). */
  failures(address: string): number {
    const entry = this.#entries.get(address);
    return entry ? this.#decayed(entry, this.#now()) : 0;
  }

  /** Records one failed authentication from `address`; returns its new lockout in ms. */
  fail(address: string): number {
    const now = this.#now();
    const entry = this.#entries.get(address);
    const failures = (entry ? this.#decayed(entry, now) : 0) + 1;
    const lockout = Math.min(this.#max, this.#base * 2 ** Math.min(failures - 1, 40));
    this.#entries.delete(address);
    this.#entries.set(address, { failures, last: now, until: now + lockout });
    while (this.#entries.size > this.#maxEntries) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
    return lockout;
  }

  /** How many addresses are remembered. */
  get size(): number {
    return this.#entries.size;
  }

  #decayed(entry: Entry, now: number): number {
    const halvings = Math.floor(Math.max(0, now - entry.last) / this.#quiet);
    return halvings >= 31 ? 0 : entry.failures >> halvings;
  }
}
