// VQAv2 accuracy with the official answer normalisation (known cases of vqaEval.py's rules), and retrieval recall,
// chance level and the ITM re-ranking step.
import { describe, expect, test } from 'vitest';
import { normalizeVqaAnswer, processPunctuation, recallChance, rerankTopK, retrievalChance, retrievalMetrics, vqaAccuracy, vqaOverall } from '.';

describe('VQAv2 accuracy', () => {
  test.each([
    ['Two', '2'],
    ['A dog.', 'dog'],
    ['the', ''],
    ['none', '0'],
    ['3.5', '3.5'],
    ['1,000', '1000'],
    ['red, white', 'red white'],
    ['red,white', 'red white'],
    ["man's", 'man s'],
    ['dont', 'don’t'],
    ['yes!', 'yes!'],
    ['  On the\tleft\n', 'on left'],
  ])('answer %j normalises to %j', (answer, expected) => {
    expect(normalizeVqaAnswer(answer)).toBe(expected);
  });

  test('at most 32 periods are removed (the reference passes re.UNICODE as the count)', () => {
    expect(processPunctuation('.'.repeat(40))).toBe('.'.repeat(8));
  });

  test('each of the 10 answers left out in turn, min(1, matches among the other 9 / 3), averaged', () => {
    const answers = (k: number) => [...Array<string>(k).fill('2'), ...Array<string>(10 - k).fill('3')];
    // k humans agree: k·min(1,(k−1)/3) + (10−k)·min(1,k/3), over 10.
    expect(vqaAccuracy('two', answers(0))).toBe(0);
    expect(vqaAccuracy('two', answers(1))).toBeCloseTo(0.3, 15);
    expect(vqaAccuracy('two', answers(2))).toBeCloseTo(0.6, 15);
    expect(vqaAccuracy('two', answers(3))).toBeCloseTo(0.9, 15);
    expect(vqaAccuracy('two', answers(4))).toBe(1);
    expect(vqaAccuracy('Two.', answers(10))).toBe(1);
  });

  test('human answers are only punctuation-processed, and only when they differ', () => {
    // All "yes." -> left as they are, so "yes" never matches; mixed answers get processPunctuation ("yes." -> "yes").
    expect(vqaAccuracy('yes', Array<string>(10).fill('yes.'))).toBe(0);
    expect(vqaAccuracy('yes', [...Array<string>(9).fill('yes.'), 'no'])).toBe(1);
    // Number words in human answers are not mapped: "two" among them does not match the prediction "2".
    expect(vqaAccuracy('2', [...Array<string>(9).fill('two'), 'three'])).toBe(0);
    expect(vqaOverall([{ prediction: 'two', answers: Array<string>(10).fill('2') }, { prediction: 'cat', answers: Array<string>(10).fill('dog') }])).toBe(0.5);
  });
});

describe('retrieval', () => {
  // 3 images, 6 texts; image i owns texts 2i and 2i+1.
  const imgToTexts = [[0, 1], [2, 3], [4, 5]];
  const textToImg = [0, 0, 1, 1, 2, 2];
  const transpose = (m: number[][]) => m[0]!.map((_, j) => m.map((r) => r[j]!));

  test('recall in both directions, an image ranked by its best ground-truth text', () => {
    const i2t = [
      [0.1, 0.9, 0.2, 0.3, 0.0, 0.0], // image 0: text 1 first -> rank 0
      [0.9, 0.1, 0.2, 0.8, 0.0, 0.0], // image 1: best own text 3 is second -> rank 1
      [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], // image 2: own texts 4, 5 at ranks 4, 5 -> rank 4
    ];
    const m = retrievalMetrics(i2t, transpose(i2t), imgToTexts, textToImg);
    expect(m.txt_r1).toBeCloseTo(100 / 3, 12);
    expect(m.txt_r5).toBe(100);
    expect(m.txt_r10).toBe(100);
    // Texts: 0 -> images [.1,.9,.9]: image 0 rank 2; 1 -> [.9,.1,.8] rank 0; 2 -> [.2,.2,.7] image 1 tied with 0 -> rank 2;
    // 3 -> [.3,.8,.6] rank 0; 4 -> [0,0,.5] rank 0; 5 -> [0,0,.4] rank 0.
    expect(m.img_r1).toBeCloseTo(400 / 6, 12);
    expect(m.img_r5).toBe(100);
    expect(m.txt_r_mean).toBeCloseTo((100 / 3 + 200) / 3, 12);
    expect(m.r_mean).toBeCloseTo((m.txt_r_mean + m.img_r_mean) / 2, 12);
    expect(m.agg_metrics).toBe(m.txt_r_mean);
  });

  test('ties count against the target: a constant score matrix is not a perfect retriever', () => {
    const flat = imgToTexts.map(() => Array<number>(6).fill(0.5));
    const m = retrievalMetrics(flat, transpose(flat), imgToTexts, textToImg);
    expect(m.txt_r1).toBe(0);
    expect(m.img_r1).toBe(0);
    expect(m.img_r5).toBe(100); // 3 images: every one is within the first 5
  });

  test('chance level equals the exhaustive average over all orderings', () => {
    // P(one of g targets among the first k of 6) = 1 − C(6−g,k)/C(6,k), checked over all 720 orders.
    const perms = (xs: number[]): number[][] => (xs.length <= 1 ? [xs] : xs.flatMap((x, i) => perms([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p])));
    const orders = perms([0, 1, 2, 3, 4, 5]);
    for (const g of [1, 2, 3]) {
      for (const k of [1, 2, 3, 5, 10]) {
        const hit = orders.filter((o) => o.slice(0, k).some((t) => t < g)).length / orders.length;
        expect(recallChance(6, g, k)).toBeCloseTo(hit, 12);
      }
    }
    expect(recallChance(5, 2, 2)).toBeCloseTo(0.7, 12);
    const c = retrievalChance(imgToTexts, 6);
    expect(c.img_r1).toBeCloseTo(100 / 3, 12);
    expect(c.txt_r1).toBeCloseTo(100 * (2 / 6), 12);
    expect(c.txt_r5).toBeCloseTo(100 * (1 - 0), 12); // 5 picks of 6 cannot miss 2 targets
  });

  test('re-ranking: the top k by ITC get ITM + ITC, the rest −100, and ITM can reorder them', async () => {
    // ITC prefers the wrong text for every image; ITM knows the truth.
    const sim = [
      [0.2, 0.1, 0.9, 0.0, 0.3, 0.0],
      [0.0, 0.9, 0.3, 0.1, 0.0, 0.0],
      [0.9, 0.0, 0.1, 0.0, 0.3, 0.2],
    ];
    const calls: Array<readonly [number, number]> = [];
    const itm = (pairs: ReadonlyArray<readonly [number, number]>) => {
      calls.push(...pairs);
      return pairs.map(([i, t]) => (textToImg[t] === i ? 5 : -5));
    };
    const before = retrievalMetrics(sim, transpose(sim), imgToTexts, textToImg);
    const { scoresI2t, scoresT2i } = await rerankTopK(sim, 3, itm);
    expect(calls.length).toBe(3 * 3 + 6 * 3);
    // Image 0's top 3 by ITC: texts 2, 4, 0.
    expect(Array.from(scoresI2t[0]!)).toEqual([5 + 0.2, -100, -5 + 0.9, -100, -5 + 0.3, -100]);
    const after = retrievalMetrics(scoresI2t, scoresT2i, imgToTexts, textToImg);
    expect(before.txt_r1).toBe(0);
    expect(after.txt_r1).toBe(100);
    expect(after.img_r1).toBe(100);
    // k larger than the candidates is capped.
    const all = await rerankTopK(sim, 128, itm);
    expect(all.scoresI2t[0]!.every((v) => v !== -100)).toBe(true);
  });
});
