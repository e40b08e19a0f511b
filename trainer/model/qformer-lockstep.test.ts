// The lockstep path computes the numbers of the readable one: four stage-1 passes through `qformerLockstep` against
// each pass through `qformerEncoder` (a loop over `qformerLayer`), outputs and gradients.
import { beforeAll, describe, expect, test } from 'vitest';
import { createParams, disposeParams, presetConfig, visionSeqLen } from './index';
import { initEngine, tf } from '../engine';
import { itcQueryPass, itcTextPass } from './itc';
import { itmPass } from './itm';
import { itgPass, itgTargets } from './itg';
import { layerNorm } from './layers';
import { projectImage, qformerEncoder, selectImages } from './qformer';
import { qformerLockstep } from './qformer-lockstep';

beforeAll(async () => {
  await initEngine();
});

describe.each(['tiny', 'small'])('qformerLockstep on the %s preset', (preset) => {
  test('equals the passes run one by one through qformerEncoder: outputs and gradients', () => {
    const config = presetConfig(preset);
    if (preset === 'small') config.qformer_config.num_hidden_layers = 2; // one cross and one plain layer keep the test short
    const q = config.qformer_config;
    const B = 3, T = 10;
    const params = createParams(config, 5);
    const before = tf.memory().numTensors;
    const ids = Array.from({ length: B }, (_, b) => Array.from({ length: T }, (_, t) => (t === 0 ? config.lavis_config.cls_token_id : t < 4 + 2 * b ? 5 + ((7 * t + b) % 50) : q.pad_token_id)));
    const attentionRows = ids.map((row) => row.map((v) => (v === q.pad_token_id ? 0 : 1)));
    const inputIds = tf.tensor2d(ids, [B, T], 'int32');
    const attentionMask = tf.tensor2d(attentionRows, [B, T], 'int32');
    const visionHidden = tf.randomNormal([B, visionSeqLen(config.vision_config), config.vision_config.hidden_size], 0, 1, 'float32', 7) as tf.Tensor3D;
    const negTextIds = tf.reverse(inputIds, 0) as tf.Tensor2D;
    const negTextMask = tf.reverse(attentionMask, 0) as tf.Tensor2D;
    const itg = itgTargets(config, ids);
    const names = ['query_tokens', 'qformer.encoder.layer.0.crossattention.attention.key.weight', 'qformer.encoder.layer.1.output.dense.weight', 'embeddings.word_embeddings.weight'];
    const xs = names.map((n) => params.get(n)!);
    const up = (outs: tf.Tensor[]) => tf.addN(outs.map((o, i) => tf.sum(tf.mul(o, tf.randomNormal(o.shape, 0, 1, 'float32', 100 + i))))) as tf.Scalar;

    /** The four passes' outputs, each weighted by fixed random numbers and summed (a scalar to differentiate). */
    const loss = (lockstep: boolean) => {
      const embeds = layerNorm(params, 'vision_model.post_layernorm', visionHidden, config.lavis_config.ln_vision_eps) as tf.Tensor3D;
      const cross = projectImage(params, config, embeds);
      const passes = [
        itcQueryPass(params, config, selectImages(cross, { begin: 0, size: B }), B, true),
        itcTextPass(params, config, inputIds, attentionRows),
        itmPass(params, config, { cross, imageEmbeds: embeds }, { inputIds, attentionMask }, { negImageIndex: [2, 0, 1], negTextIds, negTextMask }),
      ];
      if (lockstep) return up(qformerLockstep(params, config, [...passes, { ...itgPass(params, config, itg.decIds, attentionRows), pastFrom: 0 }]).out);
      const query = qformerEncoder(params, config, passes[0]!.h, passes[0]!);
      const outs = [query.out, ...passes.slice(1).map((p) => qformerEncoder(params, config, p.h, p).out)];
      const itgP = itgPass(params, config, itg.decIds, attentionRows, query.kv);
      return up([...outs, qformerEncoder(params, config, itgP.h, itgP).out]);
    };
    /** [value, gradients of `names`]: the parameters are swapped for the differentiated inputs while it runs. */
    const grad = (lockstep: boolean) => {
      const g = tf.valueAndGrads((...vs: tf.Tensor[]) => {
        const saved = names.map((n) => params.get(n)!);
        names.forEach((n, i) => params.set(n, vs[i]!));
        try {
          return loss(lockstep);
        } finally {
          names.forEach((n, i) => params.set(n, saved[i]!));
        }
      });
      return tf.tidy(() => {
        const r = g(xs);
        return [r.value, ...r.grads];
      });
    };
    const fast = grad(true);
    const readable = grad(false);
    // The forward computes row for row the same products; only the GEMMs have more rows, which can change how a
    // GEMM blocks its sums. The weight gradients differ more: lockstep sums X·dY over the rows of all passes in one
    // GEMM, the readable path per pass and then adds the passes, in another order. Either way each number is a sum
    // whose order changed, so the bound is 2·K·u of the largest term on each side (u = 2^-24), K the longest sum:
    // all rows of all passes, or the FFN's intermediate size. Measured: values equal on tiny, ~1e-6 relative apart.
    const rows = B * config.num_query_tokens + B * T + 3 * B * (config.num_query_tokens + T) + B * T;
    const K = Math.max(rows, q.intermediate_size);
    fast.forEach((g, i) => {
      const ref = readable[i]!;
      const scale = tf.tidy(() => tf.max(tf.abs(ref)).dataSync()[0]!);
      const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(g, ref))).dataSync()[0]!);
      expect(diff, i === 0 ? 'value' : `gradient of ${names[i - 1]}`).toBeLessThanOrEqual(2 * 2 * K * 2 ** -24 * scale);
      expect(scale, `${i === 0 ? 'value' : names[i - 1]} is not zero`).toBeGreaterThan(0);
    });
    tf.dispose([...fast, ...readable, inputIds, attentionMask, visionHidden, negTextIds, negTextMask]);
    expect(tf.memory().numTensors).toBe(before);
    disposeParams(params);
  });
});
