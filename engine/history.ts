/**
 * The history of past migrations, both directions (docs/ARCHITECTURE.md,
 * "History"): their ids, outcomes, final stats and explanations, and the flight
 * recorder's timelines of the last few. With a state directory it survives a
 * restart: records go to `history.jsonl` (one JSON line each), timelines to
 * `timelines/ID.json`; both are bounded.
 * @module
 */
import { type MigrationRecord, MigrationRecordSchema, type Timeline } from "./contract.ts";

/** Records kept by default. */
export const DEFAULT_MAX_RECORDS = 200;
/** Timelines kept (in memory and on disk): the most recent outgoing migrations. */
export const MAX_TIMELINES = 16;

/** A state directory that cannot be used (not creatable, not writable, a damaged file). */
export class HistoryError extends Error {
  override readonly name = "HistoryError";
  constructor(readonly path: string, why: string, options?: ErrorOptions) {
    super(`Cannot use the state directory's ${path}: ${why}`, options);
  }
}

/**
 * Past migrations, newest last, at most `max`. `add` keeps a record (and its
 * timeline) at once in memory and writes it behind, in order; `flushed`
 * resolves once every write so far is done. A write that fails is reported to
 * `onError` and never fails a migration.
 */
export class MigrationHistory {
  readonly #records: MigrationRecord[] = [];
  readonly #timelines = new Map<string, Timeline>();
  readonly #dir: string | undefined;
  readonly #max: number;
  readonly #onError: (e: Error) => void;
  #writing: Promise<void> = Promise.resolve();
  /** Lines in history.jsonl (it is rewritten with the last `max` past 2 × max). */
  #lines = 0;
  readonly #listeners = new Set<(record: MigrationRecord) => void>();

  private constructor(
    dir: string | undefined,
    max: number,
    onError: (e: Error) => void,
  ) {
    this.#dir = dir;
    this.#max = max;
    this.#onError = onError;
  }

  /** A history kept in memory only. */
  static memory(max = DEFAULT_MAX_RECORDS): MigrationHistory {
    return new MigrationHistory(undefined, max, () => {});
  }

  /**
   * Opens (creating it, mode 0700) the state directory `dir` and loads what is
   * there. A line that is not a record is skipped with a warning through
   * `onError`, never fatal: a crash mid-append leaves at most one such line.
   */
  static async open(
    dir: string,
    opts: { max?: number; onError?: (e: Error) => void } = {},
  ): Promise<MigrationHistory> {
    const onError = opts.onError ?? ((e) => console.error(`ferry: ${e.message}`));
    const h = new MigrationHistory(dir, opts.max ?? DEFAULT_MAX_RECORDS, onError);
    try {
      await Deno.mkdir(`${dir}/timelines`, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new HistoryError(dir, (e as Error).message, { cause: e });
    }
    let text = "";
    try {
      text = await Deno.readTextFile(h.#file);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new HistoryError(h.#file, (e as Error).message, { cause: e });
      }
    }
    const lines = text.split("\n").filter((l) => l.trim() !== "");
    h.#lines = lines.length;
    lines.forEach((line, i) => {
      let parsed;
      try {
        parsed = MigrationRecordSchema.safeParse(JSON.parse(line));
      } catch {
        parsed = null;
      }
      if (parsed?.success) h.#keep(parsed.data);
      else onError(new HistoryError(h.#file, `line ${i + 1} is not a migration record: skipped`));
    });
    for (const rec of h.#records.slice(-MAX_TIMELINES)) {
      try {
        h.#timelines.set(rec.id, JSON.parse(await Deno.readTextFile(h.#timelineFile(rec.id))));
      } catch {
        // Incoming migrations have none; a lost one only means no timeline to show.
      }
    }
    return h;
  }

  get #file(): string {
    return `${this.#dir}/history.jsonl`;
  }

  #timelineFile(id: string): string {
    return `${this.#dir}/timelines/${id}.json`;
  }

  /** The state directory, if any. */
  get dir(): string | undefined {
    return this.#dir;
  }

  /** Past migrations, newest first. */
  list(): MigrationRecord[] {
    return [...this.#records].reverse();
  }

  /** One past migration by id. */
  get(id: string): MigrationRecord | undefined {
    return this.#records.find((r) => r.id === id);
  }

  /** The timeline of one of the last {@link MAX_TIMELINES} outgoing migrations. */
  timeline(id: string): Timeline | undefined {
    return this.#timelines.get(id);
  }

  /** Resolves once every record added so far is on disk (or failed to get there). */
  get flushed(): Promise<void> {
    return this.#writing;
  }

  /** Calls `listener` with every record added from now on (metrics count them); returns its remover. */
  subscribe(listener: (record: MigrationRecord) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Keeps a finished migration, and its timeline when it has one. */
  add(record: MigrationRecord, timeline?: Timeline): void {
    const dropped = this.#keep(record);
    for (const listener of this.#listeners) {
      try {
        listener(record);
      } catch (e) {
        console.error("ferry: history listener failed:", e);
      }
    }
    if (timeline) this.#timelines.set(record.id, timeline);
    const oldTimelines: string[] = [];
    while (this.#timelines.size > MAX_TIMELINES) {
      const oldest = this.#timelines.keys().next().value!;
      this.#timelines.delete(oldest);
      oldTimelines.push(oldest);
    }
    for (const r of dropped) {
      if (this.#timelines.delete(r.id)) oldTimelines.push(r.id);
    }
    if (this.#dir === undefined) return;
    const line = JSON.stringify(record) + "\n";
    const snapshot = this.#records.slice();
    this.#writing = this.#writing.then(async () => {
      try {
        if (timeline) {
          await writeAtomic(this.#timelineFile(record.id), JSON.stringify(timeline));
        }
        for (const id of oldTimelines) {
          await Deno.remove(this.#timelineFile(id)).catch(() => {});
        }
        if (this.#lines + 1 > 2 * this.#max) {
          await writeAtomic(this.#file, snapshot.map((r) => JSON.stringify(r) + "\n").join(""));
          this.#lines = snapshot.length;
        } else {
          await Deno.writeTextFile(this.#file, line, { append: true, mode: 0o600 });
          this.#lines++;
        }
      } catch (e) {
        this.#onError(new HistoryError(this.#dir!, (e as Error).message, { cause: e }));
      }
    });
  }

  /** Adds a record in memory; returns the records it pushed out. */
  #keep(record: MigrationRecord): MigrationRecord[] {
    const at = this.#records.findIndex((r) => r.id === record.id);
    if (at >= 0) this.#records.splice(at, 1);
    this.#records.push(record);
    return this.#records.length > this.#max
      ? this.#records.splice(0, this.#records.length - this.#max)
      : [];
  }
}

/** Writes `text` to a temporary file beside `path`, then renames it over `path`. */
async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    await Deno.writeTextFile(tmp, text, { mode: 0o600 });
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
