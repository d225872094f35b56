/**
 * The guest's pseudo-random generator: Marsaglia's xorshift128 (four 32-bit words of
 * state). It is fast enough to fill a GiB of RAM in a fraction of a second and its
 * state is small enough to travel in the vCPU device state, so a migrated guest keeps
 * producing the same sequence.
 */

/** The four 32-bit words of an xorshift128 state; never all zero. */
export type PrngState = readonly [number, number, number, number];

/** Expands a seed into a non-zero xorshift128 state (splitmix32 per word), deterministically. */
export function xorshiftSeed(seed: number): PrngState {
  let x = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < 4; i++) {
    x = (x + 0x9e3779b9) >>> 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    out.push((z ^ (z >>> 16)) >>> 0);
  }
  if ((out[0] | out[1] | out[2] | out[3]) === 0) out[0] = 1;
  return [out[0], out[1], out[2], out[3]];
}

/** True when a state is usable: four unsigned 32-bit integers, not all zero. */
export function isValidPrngState(state: readonly number[]): boolean {
  return state.length === 4 &&
    state.every((v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff) &&
    state.some((v) => v !== 0);
}

/**
 * Advances `state` (a 4-word array, updated in place) and returns the next unsigned
 * 32-bit output. Hot loops inline the same three lines on local variables instead.
 */
export function xorshiftNext(state: Uint32Array): number {
  const x = state[0];
  const t = x ^ (x << 11);
  state[0] = state[1];
  state[1] = state[2];
  const w = state[3];
  state[2] = w;
  const next = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
  state[3] = next;
  return next;
}
