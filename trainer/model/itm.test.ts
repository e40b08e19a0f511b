// The hard-negative sampler and its weights: the draws of a rank's rows equal one process's over the whole batch.
import { describe, expect, it } from 'vitest';
import { initEngine } from '../engine';
import { itmSamplingWeights, sampleHardNegatives } from './itm';
import { itgTargetCount } from './itg';

const split = (sizes: number[]) => sizes.map((_, r) => sizes.slice(0, r).reduce((a, c) => a + c, 0));

describe.each([
  { sizes: [3] },
  { sizes: [2, 3] },
  { sizes: [2, 0, 3] },
  { sizes: [1, 4, 2, 1] },
])('ITM hard negatives over world shape $sizes', ({ sizes }) => {
  const B = sizes.reduce((a, c) => a + c, 0);
  it('draws the same ITM negatives as one process over the whole batch (counter-based draws)', async () => {
    await initEngine();
    const Q = 3, E = 4;
    const img = Float32Array.from({ length: B * Q * E }, (_, i) => Math.sin(i * 1.3));
    const txt = Float32Array.from({ length: B * E }, (_, i) => Math.cos(i * 0.7));
    const whole = itmSamplingWeights({ imageFeats: img, textFeat: txt, allImageFeats: img, allTextFeat: txt }, { rows: B, globalBatch: B, numQueryTokens: Q, embedDim: E }, 0.07, 0);
    const ref = sampleHardNegatives(whole, B, B, { seed: 42, step: 9, rankOffset: 0 });
    const offsets = split(sizes);
    const got = { img: [] as number[], txt: [] as number[] };
    sizes.forEach((b, r) => {
      if (b === 0) return;
      const o = offsets[r]!;
      const w = itmSamplingWeights({ imageFeats: img.slice(o * Q * E, (o + b) * Q * E), textFeat: txt.slice(o * E, (o + b) * E), allImageFeats: img, allTextFeat: txt }, { rows: b, globalBatch: B, numQueryTokens: Q, embedDim: E }, 0.07, o);
      expect(Array.from(w.t2i)).toEqual(Array.from(whole.t2i.subarray(o * B, (o + b) * B)).map((x) => expect.closeTo(x, 6)));
      const n = sampleHardNegatives(w, b, B, { seed: 42, step: 9, rankOffset: o });
      got.img.push(...n.negImageIdx);
      got.txt.push(...n.negTextIdx);
    });
    expect(got.img).toEqual(Array.from(ref.negImageIdx));
    expect(got.txt).toEqual(Array.from(ref.negTextIdx));
    if (B > 1) {
      // The positive is never drawn (its weight is exp(−10000 − …) = 0).
      ref.negImageIdx.forEach((g, i) => expect(g).not.toBe(i));
      ref.negTextIdx.forEach((g, i) => expect(g).not.toBe(i));
    }
  });
});

describe('itgTargetCount', () => {
  it('counts non-pad tokens after the first position (LAVIS masks ITG labels by pad id)', () => {
    const ids = Int32Array.from([1, 5, 6, 2, 0, 0, 1, 7, 2, 0, 0, 0]);
    expect(itgTargetCount(ids, 6, 0)).toBe(3 + 2);
    expect(itgTargetCount([1, 5, 0], 3, 0)).toBe(1);
  });
});
