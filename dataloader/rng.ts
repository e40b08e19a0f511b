/**
 * Seeded randomness for pure planning and augmentation: every random choice is a function of named parts
 * (seed, epoch, sample id ...), so a resumed run or a redelivered shard makes the same choices.
 */

import { cyrb128 } from '../common';

/** A uniform [0, 1) generator (sfc32) seeded from the given parts. */
export function seededRandom(...parts: Array<string | number>): () => number {
  let [a, b, c, d] = cyrb128(parts.map(String).join('\u0000'));
  return () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    let t = (a + b) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    d = (d + 1) | 0;
    t = (t + d) | 0;
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
}

/** Integer in [lo, hi) from a uniform generator. */
export function randInt(rand: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo));
}

/** Fisher–Yates shuffle into a new array. */
export function shuffled<T>(items: readonly T[], rand: () => number): T[] {
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
