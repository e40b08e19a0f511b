// The stage-2 step split over ranks: with the global token count as normaliser, the ranks' summed gradients (and
// losses) equal the one-process gradient of the whole batch, for unequal batches, with and without a prompt.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { presetConfig, trainableNames, visionSeqLen, type Blip2Config } from './config';
import { initEngine, tf } from '../engine';
import { OptLanguageModel } from './opt';
import { createParams, disposeParams, type Params } from './params';
import { stage2Step, stage2TargetCount, type Stage2Result } from './stage2';
import { ModelInputError } from './errors';

const config: Blip2Config = presetConfig('tiny');
const o = config.text_config;
const B = 5;
const T = 7;
let params: Params;
let lm: OptLanguageModel;
let visionHidden: tf.Tensor3D;
const ids: number[][] = [];
const mask: number[][] = [];

beforeAll(async () => {
  await initEngine();
  params = createParams(config, 3, { stage: 2 });
  const lmParams = createParams(config, 4, { groups: ['language_model'] });
  lm = await OptLanguageModel.fromParams(lmParams, config, { fp16: true });
  disposeParams(lmParams);
  visionHidden = tf.randomNormal([B, visionSeqLen(config.vision_config), config.vision_config.hidden_size], 0, 1, 'float32', 5) as tf.Tensor3D;
  // Captions of different lengths: BOS, words, "\n", right padding.
  for (let b = 0; b < B; b++) {
    const len = 3 + ((b * 2) % (T - 2));
    ids.push(Array.from({ length: T }, (_, t) => (t === 0 ? o.bos_token_id : t === len - 1 ? config.lavis_config.newline_token_id : t < len ? 4 + ((b * 31 + t * 7) % (o.vocab_size - 4)) : o.pad_token_id)));
    mask.push(Array.from({ length: T }, (_, t) => (t < len ? 1 : 0)));
  }
});
afterAll(() => {
  disposeParams(params);
  visionHidden.dispose();
});

function step(begin: number, end: number, promptLength: number, tokens?: number): Stage2Result {
  const slice = tf.slice(visionHidden, begin, end - begin) as tf.Tensor3D;
  const optInputIds = tf.tensor2d(ids.slice(begin, end), [end - begin, T], 'int32');
  const optAttentionMask = tf.tensor2d(mask.slice(begin, end), [end - begin, T], 'int32');
  try {
    return stage2Step(params, lm, { visionHidden: slice, optInputIds, optAttentionMask, normalisers: { tokens } }, { promptLength });
  } finally {
    for (const t of [slice, optInputIds, optAttentionMask]) t.dispose();
  }
}

describe.each([
  [[2, 3]],
  [[1, 3, 1]],
])('stage 2 over ranks with batches %j', (batches) => {
  test.each([0, 2])('summed gradients = one-process gradient (prompt length %i)', (promptLength) => {
    const before = tf.memory().numTensors;
    const whole = step(0, B, promptLength);
    const bounds = batches.map((_, r) => batches.slice(0, r).reduce((a, b) => a + b, 0));
    const counts = batches.map((n, r) => stage2TargetCount(lm, { ids: ids.slice(bounds[r], bounds[r]! + n), mask: mask.slice(bounds[r], bounds[r]! + n) }, promptLength));
    const tokens = counts.reduce((a, b) => a + b, 0);
    expect(tokens).toBe(whole.targetTokens);
    const ranks = batches.map((n, r) => step(bounds[r]!, bounds[r]! + n, promptLength, tokens));
    expect(ranks.map((r) => r.targetTokens)).toEqual(counts);
    expect(ranks.reduce((a, r) => a + r.loss, 0)).toBeCloseTo(whole.loss, 5);
    for (const name of trainableNames(config, 2)) {
      const ref = whole.grads.get(name)!.dataSync();
      const sums = new Float64Array(ref.length);
      for (const r of ranks) r.grads.get(name)!.dataSync().forEach((v, i) => (sums[i]! += v));
      let maxRef = 0;
      let worst = 0;
      for (let i = 0; i < ref.length; i++) {
        maxRef = Math.max(maxRef, Math.abs(ref[i]!));
        worst = Math.max(worst, Math.abs(sums[i]! - ref[i]!));
      }
      expect(worst, name).toBeLessThanOrEqual(1e-7 + 1e-4 * maxRef);
    }
    // The gradient reaches the Q-Former through the frozen LM and the projection.
    expect(whole.grads.get('query_tokens')!.dataSync().some((v) => v !== 0)).toBe(true);
    whole.dispose();
    for (const r of ranks) r.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('stage 2 inputs', () => {
  test('mismatched shapes and a bad normaliser are named', () => {
    const optInputIds = tf.tensor2d(ids.slice(0, 2), [2, T], 'int32');
    const optAttentionMask = tf.tensor2d(mask.slice(0, 2), [2, T], 'int32');
    expect(() => stage2Step(params, lm, { visionHidden, optInputIds, optAttentionMask })).toThrow(ModelInputError);
    const two = tf.slice(visionHidden, 0, 2) as tf.Tensor3D;
    expect(() => stage2Step(params, lm, { visionHidden: two, optInputIds, optAttentionMask, normalisers: { tokens: -1 } })).toThrow(/normalisers.tokens/);
    expect(() => stage2Step(params, lm, { visionHidden: two, optInputIds, optAttentionMask }, { promptLength: T + 1 })).toThrow(/prompt length/);
    for (const t of [optInputIds, optAttentionMask, two]) t.dispose();
  });
});
