import { describe, expect, it } from 'vitest';
import { initEngine } from './engine';
import { createLocalGroup } from './local-group';
import { fetchRows, itgTargetCount, itmWeights, sampleNegatives } from './step';
import { uniformAt } from './rng';

const split = (sizes: number[]) => sizes.map((_, r) => sizes.slice(0, r).reduce((a, c) => a + c, 0));

describe.each([
  { sizes: [3] },
  { sizes: [2, 3] },
  { sizes: [2, 0, 3] },
  { sizes: [1, 4, 2, 1] },
])('step building blocks over world shape $sizes', ({ sizes }) => {
  const B = sizes.reduce((a, c) => a + c, 0);
  const rowLength = 5;
  const table = Float32Array.from({ length: B * rowLength }, (_, i) => i * 0.5 - 3);

  it('fetchRows returns every wanted global row, wherever it lives', async () => {
    const group = createLocalGroup(sizes.length);
    const offsets = split(sizes);
    const wantedOf = (r: number) => Array.from({ length: sizes[r]! + 1 }, (_, k) => Math.floor(uniformAt('w', r, k) * B));
    const got = await Promise.all(group.map((coll, r) =>
      fetchRows(coll, table.slice(offsets[r]! * rowLength, (offsets[r]! + sizes[r]!) * rowLength), rowLength, sizes, wantedOf(r))));
    got.forEach((rows, r) => {
      const want = wantedOf(r).flatMap((g) => Array.from(table.subarray(g * rowLength, (g + 1) * rowLength)));
      expect(Array.from(rows)).toEqual(want);
    });
  });

  it('draws the same ITM negatives as one process over the whole batch (counter-based draws)', async () => {
    await initEngine();
    const Q = 3, E = 4;
    const img = Float32Array.from({ length: B * Q * E }, (_, i) => Math.sin(i * 1.3));
    const txt = Float32Array.from({ length: B * E }, (_, i) => Math.cos(i * 0.7));
    const whole = itmWeights(img, txt, img, txt, B, B, 0, { numQueryTokens: Q, embedDim: E }, 0.07);
    const ref = sampleNegatives(whole, B, B, 0, 42, 9);
    const offsets = split(sizes);
    const got = { img: [] as number[], txt: [] as number[] };
    sizes.forEach((b, r) => {
      if (b === 0) return;
      const o = offsets[r]!;
      const w = itmWeights(img.slice(o * Q * E, (o + b) * Q * E), txt.slice(o * E, (o + b) * E), img, txt, b, B, o, { numQueryTokens: Q, embedDim: E }, 0.07);
      expect(Array.from(w.t2i)).toEqual(Array.from(whole.t2i.subarray(o * B, (o + b) * B)).map((x) => expect.closeTo(x, 6)));
      const n = sampleNegatives(w, b, B, o, 42, 9);
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
    expect(itgTargetCount(ids, 2, 6, 0)).toBe(3 + 2);
  });
});
