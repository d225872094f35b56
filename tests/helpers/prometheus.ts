/**
 * A small parser of Prometheus's text format 0.0.4 for tests: every sample with
 * its labels, and every metric's TYPE. It rejects a line it cannot read, so a
 * malformed scrape fails the test.
 */
export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface Scrape {
  readonly samples: Sample[];
  readonly types: ReadonlyMap<string, string>;
  /** The value of the one sample `name` with exactly these labels; throws when absent. */
  value(name: string, labels?: Record<string, string>): number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parsePrometheus(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      types.set(type[1], type[2]);
      continue;
    }
    if (line.startsWith("# HELP ")) continue;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(LABEL)) labels[l[1]] = l[2];
    const value = m[3] === "+Inf" ? Infinity : Number(m[3]);
    if (Number.isNaN(value)) throw new Error(`not a number in ${JSON.stringify(line)}`);
    samples.push({ name: m[1], labels, value });
  }
  return {
    samples,
    types,
    value(name, want = {}) {
      const found = samples.find((s) =>
        s.name === name && Object.keys(s.labels).length === Object.keys(want).length &&
        Object.entries(want).every(([k, v]) => s.labels[k] === v)
      );
      if (!found) throw new Error(`no sample ${name}${JSON.stringify(want)}`);
      return found.value;
    },
  };
}
