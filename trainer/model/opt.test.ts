// The frozen OPT decoder: the per-layer widened path (recomputed in the backward) against the float32 reference,
// 16-bit residency, positions and labels, and its input errors.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { presetConfig, type Blip2Config } from './config';
import { initEngine, tf } from '../engine';
import { gradients } from '../engine';
import { OptLanguageModel, optDecoder, optLmHead, optPositionIds, optTargets, IGNORE_INDEX } from './opt';
import { createParams, disposeParams, type Params } from './params';
import { ModelInputError } from './errors';

const config: Blip2Config = presetConfig('tiny');
const o = config.text_config;
let lmParams: Params;

beforeAll(async () => {
  await initEngine();
  lmParams = createParams(config, 7, { groups: ['language_model'] });
});
afterAll(() => disposeParams(lmParams));

/** Two right-padded texts of 6 tokens: BOS, words, "\n", pads. */
const text = {
  ids: [
    [o.bos_token_id, 17, 40, 99, 3, o.pad_token_id],
    [o.bos_token_id, 5, 3, o.pad_token_id, o.pad_token_id, o.pad_token_id],
  ],
  mask: [
    [1, 1, 1, 1, 1, 0],
    [1, 1, 1, 0, 0, 0],
  ],
};

function maxRelDiff(a: tf.Tensor, b: tf.Tensor): number {
  const x = a.dataSync();
  const y = b.dataSync();
  let scale = 0;
  let diff = 0;
  for (let i = 0; i < y.length; i++) {
    scale = Math.max(scale, Math.abs(y[i]!));
    diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
  }
  return diff / scale;
}

describe('OPT decoder', () => {
  test('positions count real tokens from 2; pads take row 1', () => {
    expect(optPositionIds([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])).toEqual([[2, 3, 4, 1, 1], [2, 3, 4, 5, 6]]);
  });

  test('labels: −100 on the soft prompt, pads and prompt; the BOS is a target without a prompt', () => {
    const t = optTargets(config, 2, text.ids, 0);
    expect(t.labels[1]).toEqual([IGNORE_INDEX, IGNORE_INDEX, o.bos_token_id, 5, 3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]);
    // Row 1 (the last prompt row) predicts the BOS.
    expect(t.rowIndex.slice(0, 2)).toEqual([1, 2]);
    expect(t.targets.slice(0, 2)).toEqual([o.bos_token_id, 17]);
    expect(t.targets.length).toBe(5 + 3);
    const prompted = optTargets(config, 2, text.ids, 2);
    expect(prompted.labels[0]!.slice(0, 4)).toEqual([IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]);
    expect(prompted.targets.length).toBe(3 + 1);
    expect(() => optTargets(config, 2, text.ids, 7)).toThrow(ModelInputError);
  });

  test.each([false, true])('per-layer widened path = float32 reference, values and gradient into the soft prompt (fp16 %s)', async (fp16) => {
    const lm = await OptLanguageModel.fromParams(lmParams, config, { fp16 });
    // The reference runs on the same (rounded) weights as the model holds them.
    const ref: Params = fp16 ? lm.weights.widen(['language_model.']) : lmParams;
    const before = tf.memory().numTensors;
    const prefix = tf.randomNormal([2, 3, o.hidden_size], 0, 1, 'float32', 3) as tf.Tensor3D;
    const upstream = tf.randomNormal([2, 9, o.vocab_size], 0, 1, 'float32', 4);
    const run = (hidden: (p: tf.Tensor3D) => tf.Tensor3D, head: (r: tf.Tensor2D) => tf.Tensor2D) =>
      gradients(() => {
        const h = hidden(prefix); // [2,9,D]
        const logits = head(tf.reshape(h, [18, o.hidden_size]) as tf.Tensor2D); // [18,V]
        return tf.sum(tf.mul(tf.reshape(logits, [2, 9, o.vocab_size]), upstream));
      }, [prefix]);
    lm.weights.resetCounters();
    const ours = run((p) => lm.hidden(p, text), (r) => lm.logits(r));
    // Forward and backward each widen every layer, the final LayerNorm and the head.
    expect(lm.weights.widening.count).toBe(2 * (o.num_hidden_layers + 2));
    const theirs = run((p) => optDecoder(ref, config, p, text), (r) => optLmHead(ref, r));
    expect(Math.abs(ours.value.dataSync()[0]! - theirs.value.dataSync()[0]!)).toBeLessThanOrEqual(1e-5 * Math.abs(theirs.value.dataSync()[0]!));
    expect(maxRelDiff(ours.grads[0]!, theirs.grads[0]!)).toBeLessThan(1e-5);
    expect(ours.grads[0]!.dataSync().some((v) => v !== 0)).toBe(true);
    for (const t of [ours.value, ours.grads[0]!, theirs.value, theirs.grads[0]!, prefix, upstream]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
    if (fp16) disposeParams(ref);
  });

  test('an F16 LM holds 2 bytes per parameter, outside the engine', async () => {
    const before = tf.memory().numBytes;
    const lm = await OptLanguageModel.fromParams(lmParams, config, { fp16: true });
    expect(lm.weights.residentBytes / lm.weights.paramCount).toBe(2);
    expect(tf.memory().numBytes).toBe(before);
    const random = OptLanguageModel.random(config, 1);
    expect(random.weights.paramCount).toBe(lm.weights.paramCount);
    expect(random.weights.residentBytes).toBe(lm.weights.residentBytes);
  });

  test('inputs that do not fit are named', async () => {
    const lm = await OptLanguageModel.fromParams(lmParams, config);
    const prefix = tf.zeros([2, 3, o.hidden_size]) as tf.Tensor3D;
    const narrow = tf.zeros([2, 3, 7]) as tf.Tensor3D;
    expect(() => lm.hidden(narrow, text)).toThrow(/soft prompt width 7/);
    expect(() => lm.hidden(prefix, { ids: text.ids.slice(0, 1), mask: text.mask.slice(0, 1) })).toThrow(/text batch 1/);
    expect(() => lm.hidden(prefix, { ids: [[o.vocab_size, 1], [2, 1]], mask: [[1, 0], [1, 0]] })).toThrow(/row 120 is outside/);
    const long = Array.from({ length: 2 }, () => Array<number>(o.max_position_embeddings).fill(5));
    expect(() => lm.hidden(prefix, { ids: long, mask: long.map((r) => r.map(() => 1)) })).toThrow(/exceed max_position_embeddings/);
    prefix.dispose();
    narrow.dispose();
  });
});
