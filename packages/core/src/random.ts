// Seeded test data: the inputs every package's reference checks and conformance suites use.

/** Deterministic pseudo-random numbers in [-1, 1) (mulberry32), for test inputs. */
export function randomArray(length: number, seed: number, scale = 1): Float32Array {
  let state = seed >>> 0;
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

/**
 * A seeded generator of uniform numbers in (0, 1) (a 32-bit LCG; every seed, 0 included, its own stream), for random
 * weights and test rows that must be the same on every run.
 */
export function seededUniform(seed: number): () => number {
  let state = (Math.imul(seed >>> 0, 2654435761) + 0x9e3779b9) >>> 0 || 1;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return (state + 0.5) / 2 ** 32;
  };
}

/** `length` normal values of standard deviation `std` (Box–Muller) drawn from `uniform`. */
export function randomNormal(length: number, std: number, uniform: () => number): Float32Array {
  return Float32Array.from(
    { length },
    () => std * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform()),
  );
}
