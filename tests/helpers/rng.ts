/**
 * A seeded xorshift32 generator of floats in [0, 1) for tests that need many
 * reproducible random inputs (page contents, change positions).
 */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}
