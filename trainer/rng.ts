/**
 * Counter-based randomness for the training step: every draw is a pure function of named parts (seed, step,
 * global row, stream), so that the draws do not depend on how the global batch is split over ranks, and a resumed
 * run repeats them without any saved generator state beyond the seed.
 */

/** cyrb128: a 128-bit string hash as four 32-bit words. */
function cyrb128(str: string): [number, number, number, number] {
  let h1 = 1779033703, h2 = 3144134277, h3 = 1013904242, h4 = 2773480762;
  for (let i = 0; i < str.length; i++) {
    const k = str.charCodeAt(i);
    h1 = h2 ^ Math.imul(h1 ^ k, 597399067);
    h2 = h3 ^ Math.imul(h2 ^ k, 2869860233);
    h3 = h4 ^ Math.imul(h3 ^ k, 951274213);
    h4 = h1 ^ Math.imul(h4 ^ k, 2716044179);
  }
  h1 = Math.imul(h3 ^ (h1 >>> 18), 597399067);
  h2 = Math.imul(h4 ^ (h2 >>> 22), 2869860233);
  h3 = Math.imul(h1 ^ (h3 >>> 17), 951274213);
  h4 = Math.imul(h2 ^ (h4 >>> 19), 2716044179);
  h1 ^= h2 ^ h3 ^ h4;
  h2 ^= h1;
  h3 ^= h1;
  h4 ^= h1;
  return [h1 >>> 0, h2 >>> 0, h3 >>> 0, h4 >>> 0];
}

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
