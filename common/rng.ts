/**
 * cyrb128: a 128-bit string hash returned as four 32-bit words. The project's seeded randomness (data planning and
 * augmentation in dataloader/rng.ts, the ITM hard negatives of the training step through `uniformAt`) derives every
 * generator from it, so that each random choice is a pure function of named parts (seed, epoch, step, sample id…).
 */
export function cyrb128(str: string): [number, number, number, number] {
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

/**
 * One uniform double in [0, 1) (53 random bits) determined by `parts`: counter-based, so draws do not depend on
 * how a batch is split over ranks, and a resumed run repeats them without any saved generator state but the seed.
 */
export function uniformAt(...parts: Array<string | number>): number {
  const [a, b] = cyrb128(parts.map(String).join('\u0000'));
  return ((a >>> 5) * 67108864 + (b >>> 6)) / 9007199254740992;
}

/** mulberry32: a small, fast, seedable uniform [0, 1) generator (test data). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
