/**
 * Counter-based randomness for the training step: every draw is a pure function of named parts (seed, step,
 * global row, stream), so that the draws do not depend on how the global batch is split over ranks, and a resumed
 * run repeats them without any saved generator state beyond the seed.
 */

import { cyrb128 } from '../common';

/** One uniform double in [0, 1) (53 random bits) determined by `parts`. */
export function uniformAt(...parts: Array<string | number>): number {
  const [a, b] = cyrb128(parts.map(String).join('\u0000'));
  return ((a >>> 5) * 67108864 + (b >>> 6)) / 9007199254740992;
}

/**
 * Draws one index from unnormalised non-negative `weights` with the uniform `u` (torch.multinomial with one
 * sample). Accumulates in float64; a zero-sum row falls back to a uniform choice.
 */
export function drawIndex(weights: ArrayLike<number>, u: number): number {
  let total = 0;
  for (let j = 0; j < weights.length; j++) total += weights[j]!;
  if (!(total > 0)) return Math.min(weights.length - 1, Math.floor(u * weights.length));
  const target = u * total;
  let acc = 0;
  let last = -1;
  for (let j = 0; j < weights.length; j++) {
    if (weights[j]! <= 0) continue;
    acc += weights[j]!;
    last = j;
    if (target < acc) return j;
  }
  return last;
}
