// The stage-1 step: schedules that agree, the hard-negative sampler, input checks, and rank splits whose summed
// gradients equal the one-process gradient.
import { beforeAll, describe, expect, test } from 'vitest';
import {
  createParams,
  disposeParams,
  itgTargetCount,
  localNegatives,
  presetConfig,
  sampleHardNegatives,
  stage1Features,
  stage1Step,
  stage1StepWithSchedule,
  DEFAULT_SCHEDULE,
  visionSeqLen,
  type Blip2Config,
  type ItmNegatives,
  type Params,
} from './index';
import { initEngine, tf } from '../engine';

beforeAll(async () => {
  await initEngine();
});

/** Random stage-1 batch: vision hidden states, ids with [CLS] … [SEP] [PAD]…, masks. */
function batch(config: Blip2Config, n: number, seed: number) {
  const q = config.qformer_config;
  const T = config.lavis_config.max_txt_len;
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  const ids: number[][] = [];
  const mask: number[][] = [];
  for (let i = 0; i < n; i++) {
    const len = 3 + Math.floor(rand() * (T - 3));
    ids.push(Array.from({ length: T }, (_, j) => (j === 0 ? config.lavis_config.cls_token_id : j === len - 1 ? config.lavis_config.sep_token_id : j < len ? 3 + Math.floor(rand() * (q.vocab_size - 4)) : q.pad_token_id)));
    mask.push(Array.from({ length: T }, (_, j) => (j < len ? 1 : 0)));
  }
  return {
    visionHidden: tf.randomNormal([n, visionSeqLen(config.vision_config), config.vision_config.hidden_size], 0, 1, 'float32', seed) as tf.Tensor3D,
    inputIds: tf.tensor2d(ids, undefined, 'int32'),
    attentionMask: tf.tensor2d(mask, undefined, 'int32'),
    ids,
    mask,
  };
}

/** The golden README's gradient bound: |a-b| <= 1e-6 + rel·max|b| elementwise (rel 1e-3 there). */
function expectAllClose(name: string, a: tf.Tensor, b: tf.Tensor, rel = 1e-3): void {
  const av = a.dataSync();
  const bv = b.dataSync();
  let maxB = 0;
  for (const v of bv) maxB = Math.max(maxB, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < bv.length; i++) worst = Math.max(worst, Math.abs(av[i]! - bv[i]!));
  expect(worst, `${name}: max |a-b| ${worst} vs max |b| ${maxB}`).toBeLessThanOrEqual(1e-6 + rel * maxB);
}

describe('stage-1 step', () => {
  test('sharing image keys/values gives the same losses and gradients as recomputing them per pass', () => {
    const config = presetConfig('tiny');
    const params = createParams(config, 3);
    const before = tf.memory().numTensors;
    const b = batch(config, 3, 11);
    const neg = localNegatives(b, [2, 0, 1], [1, 2, 0]);
    const shared = stage1Step(params, config, { ...b, negatives: neg });
    const naive = stage1StepWithSchedule(params, config, { ...b, negatives: neg }, {}, { ...DEFAULT_SCHEDULE, reuseImageKeyValues: false });
    expect(shared.losses.total).toBeCloseTo(naive.losses.total, 5);
    for (const [n, g] of naive.grads) expectAllClose(n, shared.grads.get(n)!, g, 1e-5);
    for (const r of [shared, naive]) r.dispose();
    for (const t of [b.visionHidden, b.inputIds, b.attentionMask, neg.negTextIds, neg.negTextMask]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
    disposeParams(params);
  });

  test('the hard-negative sampler is keyed by (seed, step, row) and never draws a masked positive', () => {
    const w = Float32Array.from([0, 0.5, 0.5, 0.9, 0, 0.1, 0.2, 0.8, 0]); // [3, 3] row-major
    const weights = { t2i: w, i2t: w };
    const a = sampleHardNegatives(weights, 3, 3, { seed: 7, step: 0, rankOffset: 0 });
    expect(sampleHardNegatives(weights, 3, 3, { seed: 7, step: 0, rankOffset: 0 })).toEqual(a);
    const counts = [0, 0, 0];
    for (let s = 0; s < 400; s++) {
      const r = sampleHardNegatives(weights, 3, 3, { seed: s, step: 3, rankOffset: 0 });
      r.negImageIdx.forEach((j, i) => expect(j).not.toBe(i));
      counts[r.negImageIdx[1]!]++;
    }
    expect(counts[0]! / 400).toBeGreaterThan(0.8); // row 1 draws column 0 with probability 0.9
  });

  test('without given negatives the step samples them from its ITM weights (world size 1)', () => {
    const config = presetConfig('tiny');
    const params = createParams(config, 4);
    const before = tf.memory().numTensors;
    const b = batch(config, 4, 5);
    const r1 = stage1Step(params, config, b, { seed: 9, grads: false });
    const r2 = stage1Step(params, config, b, { seed: 9, grads: false });
    expect(r1.negImageIndex).toEqual(r2.negImageIndex);
    expect(r1.losses).toEqual(r2.losses);
    r1.negImageIndex!.forEach((j, i) => expect(j).not.toBe(i));
    r1.negTextIndex!.forEach((j, i) => expect(j).not.toBe(i));
    for (const r of [r1, r2]) r.dispose();
    for (const t of [b.visionHidden, b.inputIds, b.attentionMask]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
    disposeParams(params);
  });

  test('rejects inputs of the wrong shape, naming them', () => {
    const config = presetConfig('tiny');
    const params = createParams(config, 1);
    const b = batch(config, 2, 1);
    const wide = tf.zeros([2, visionSeqLen(config.vision_config), config.vision_config.hidden_size + 1]) as tf.Tensor3D;
    expect(() => stage1Step(params, config, { ...b, visionHidden: wide })).toThrow(/visionHidden width 49/);
    expect(() => stage1Step(params, config, { ...b, negatives: { negImageIndex: [0, 5], negTextIds: b.inputIds, negTextMask: b.attentionMask } })).toThrow(/negImageIndex \[0,5\]/);
    for (const t of [wide, b.visionHidden, b.inputIds, b.attentionMask]) t.dispose();
    disposeParams(params);
  });

  // Per-rank steps (features gathered in rank order, negatives fetched across ranks, global normalisers) must sum
  // to the one-process step over the whole batch. Uneven batches, 3 ranks, cross-attention in every layer.
  test.each([
    ['3 ranks, batches 2/1/2, cross-attention every layer', [2, 1, 2], 1],
    ['2 ranks, batches 2/2, cross-attention every 2nd layer', [2, 2], 2],
  ] as const)('%s: summed rank gradients equal the one-process gradient', (_name, sizes, freq) => {
    const base = presetConfig('tiny');
    const config: Blip2Config = { ...base, qformer_config: { ...base.qformer_config, cross_attention_frequency: freq } };
    const params: Params = createParams(config, 5);
    const before = tf.memory().numTensors;
    const N = sizes.reduce((a, b) => a + b, 0);
    const all = batch(config, N, 21);
    const negImage = Array.from({ length: N }, (_, i) => (i + 2) % N);
    const negText = Array.from({ length: N }, (_, i) => (i + N - 1) % N);
    const refNegatives = localNegatives(all, negImage, negText);
    const ref = stage1Step(params, config, { ...all, negatives: refNegatives });

    const offsets = sizes.map((_, r) => sizes.slice(0, r).reduce((a, b) => a + b, 0));
    const local = sizes.map((n, r) => ({
      visionHidden: tf.slice(all.visionHidden, offsets[r]!, n) as tf.Tensor3D,
      inputIds: tf.slice(all.inputIds, offsets[r]!, n) as tf.Tensor2D,
      attentionMask: tf.slice(all.attentionMask, offsets[r]!, n) as tf.Tensor2D,
    }));
    const feats = local.map((l) => stage1Features(params, config, l));
    const allImageFeats = tf.concat(feats.map((f) => f.imageFeats)) as tf.Tensor3D;
    const allTextFeat = tf.concat(feats.map((f) => f.textFeat)) as tf.Tensor2D;
    const itgTokens = local.reduce((n, l) => n + itgTargetCount(l.inputIds.dataSync(), config.lavis_config.max_txt_len, config.qformer_config.pad_token_id), 0); // all-reduced count
    const results = local.map((l, r) => {
      const rows = Array.from({ length: sizes[r]! }, (_, b) => offsets[r]! + b);
      const textRows = tf.tensor1d(rows.map((i) => negText[i]!), 'int32');
      let negatives: ItmNegatives;
      if (r === 0) {
        // every negative image fetched as a tensor
        const imgRows = tf.tensor1d(rows.map((i) => negImage[i]!), 'int32');
        negatives = { negVisionHidden: tf.gather(all.visionHidden, imgRows) as tf.Tensor3D, negTextIds: tf.gather(all.inputIds, textRows) as tf.Tensor2D, negTextMask: tf.gather(all.attentionMask, textRows) as tf.Tensor2D };
        imgRows.dispose();
      } else {
        // local negatives by index, remote ones as extra rows
        const remote: number[] = [];
        const negImageIndex = rows.map((i) => {
          const j = negImage[i]!;
          if (j >= offsets[r]! && j < offsets[r]! + sizes[r]!) return j - offsets[r]!;
          remote.push(j);
          return sizes[r]! + remote.length - 1;
        });
        const extraRows = tf.tensor1d(remote, 'int32');
        negatives = {
          negImageIndex,
          extraVisionHidden: remote.length ? (tf.gather(all.visionHidden, extraRows) as tf.Tensor3D) : undefined,
          negTextIds: tf.gather(all.inputIds, textRows) as tf.Tensor2D,
          negTextMask: tf.gather(all.attentionMask, textRows) as tf.Tensor2D,
        };
        extraRows.dispose();
      }
      textRows.dispose();
      const res = stage1Step(params, config, {
        ...l,
        gathered: { allImageFeats, allTextFeat, offset: offsets[r]! },
        negatives,
        normalisers: { itcRows: N, itmRows: 3 * N, itgTokens },
      });
      for (const t of [negatives.negVisionHidden, negatives.extraVisionHidden, negatives.negTextIds, negatives.negTextMask]) t?.dispose();
      return res;
    });
    const sum = (k: 'itc' | 'itm' | 'itg') => results.reduce((a, r) => a + r.losses[k], 0);
    for (const k of ['itc', 'itm', 'itg'] as const) expect(sum(k), k).toBeCloseTo(ref.losses[k], 5);
    results.forEach((res, r) => {
      const refRows = tf.slice(ref.itmWeightsT2i, offsets[r]!, sizes[r]!);
      expectAllClose(`rank ${r} itm weights`, res.itmWeightsT2i, refRows, 1e-5);
      refRows.dispose();
    });
    for (const [name, g] of ref.grads) {
      const summed = tf.addN(results.map((res) => res.grads.get(name)!));
      // Summing per-rank gradients reorders fp32 additions; compare at the golden gradient tolerance (1e-6 + 1e-3·max|b|).
      expectAllClose(name, summed, g, 1e-3);
      summed.dispose();
    }
    ref.dispose();
    results.forEach((res) => res.dispose());
    feats.forEach((f) => [f.imageFeats, f.textFeat].forEach((t) => t.dispose()));
    local.forEach((l) => Object.values(l).forEach((t) => t.dispose()));
    for (const t of [allImageFeats, allTextFeat, all.visionHidden, all.inputIds, all.attentionMask, refNegatives.negTextIds, refNegatives.negTextMask]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
    disposeParams(params);
  });
});
