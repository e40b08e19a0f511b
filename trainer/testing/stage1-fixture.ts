/**
 * A deterministic stage-1 global batch and the one-process reference step, shared by the step-equivalence tests
 * (in-process ranks and real trainer processes over gRPC).
 */
import { createParams, presetConfig, stage1Step, trainableNames, visionSeqLen, type Blip2Config } from '../model';
import { tf } from '../engine';
import { uniformAt } from '../../common';
import type { LocalBatch } from '../step';

export interface GlobalBatch {
  config: Blip2Config;
  batch: number;
  visionHidden: Float32Array;
  inputIds: Int32Array;
  attentionMask: Int32Array;
  /** Fixed ITM negatives per global row (never the positive). */
  negImageIdx: Int32Array;
  negTextIdx: Int32Array;
}

/** A global batch of `batch` samples for the `tiny` preset: random pre-ln_vision states, captions of varied length. */
export function makeGlobalBatch(batch: number, seed = 1): GlobalBatch {
  const config = presetConfig('tiny');
  const S = visionSeqLen(config.vision_config), Dv = config.vision_config.hidden_size, T = config.lavis_config.max_txt_len, q = config.qformer_config;
  const visionHidden = Float32Array.from({ length: batch * S * Dv }, (_, i) => (uniformAt('vh', seed, i) - 0.5) * 4);
  const inputIds = new Int32Array(batch * T);
  const attentionMask = new Int32Array(batch * T);
  for (let b = 0; b < batch; b++) {
    const len = 3 + Math.floor(uniformAt('len', seed, b) * (T - 3)); // [CLS] + words + [SEP], 3..T
    for (let t = 0; t < T; t++) {
      const id = t === 0 ? config.lavis_config.cls_token_id : t === len - 1 ? config.lavis_config.sep_token_id : t < len ? 3 + Math.floor(uniformAt('id', seed, b, t) * (q.vocab_size - 4)) : q.pad_token_id;
      inputIds[b * T + t] = id;
      attentionMask[b * T + t] = t < len ? 1 : 0;
    }
  }
  const other = (b: number, k: string) => (batch === 1 ? 0 : (b + 1 + Math.floor(uniformAt(k, seed, b) * (batch - 1))) % batch);
  return {
    config, batch, visionHidden, inputIds, attentionMask,
    negImageIdx: Int32Array.from({ length: batch }, (_, b) => other(b, 'ni')),
    negTextIdx: Int32Array.from({ length: batch }, (_, b) => other(b, 'nt')),
  };
}

/** Rows [begin, begin+size) of the global batch. */
export function sliceBatch(g: GlobalBatch, begin: number, size: number): LocalBatch {
  const S = visionSeqLen(g.config.vision_config), Dv = g.config.vision_config.hidden_size, T = g.config.lavis_config.max_txt_len;
  return {
    batch: size,
    visionHidden: g.visionHidden.slice(begin * S * Dv, (begin + size) * S * Dv),
    inputIds: g.inputIds.slice(begin * T, (begin + size) * T),
    attentionMask: g.attentionMask.slice(begin * T, (begin + size) * T),
  };
}

/** The model's parameters for the fixture (stage-1 trainable set), deterministic in `seed`. */
export const fixtureParams = (config: Blip2Config, seed = 7) => createParams(config, seed, { stage: 1 });

/** One process, the whole global batch, the same fixed negatives: the reference loss and gradient. */
export function referenceStep(g: GlobalBatch, paramSeed = 7): { losses: { itc: number; itm: number; itg: number }; grads: Map<string, Float32Array> } {
  const params = fixtureParams(g.config, paramSeed);
  const S = visionSeqLen(g.config.vision_config), Dv = g.config.vision_config.hidden_size, T = g.config.lavis_config.max_txt_len;
  tf.engine().startScope();
  try {
    const inputIds = tf.tensor2d(g.inputIds, [g.batch, T], 'int32');
    const attentionMask = tf.tensor2d(g.attentionMask, [g.batch, T], 'int32');
    const idx = tf.tensor1d(g.negTextIdx, 'int32');
    const r = stage1Step(params, g.config, {
      visionHidden: tf.tensor3d(g.visionHidden, [g.batch, S, Dv]),
      inputIds,
      attentionMask,
      negatives: {
        negImageIndex: Array.from(g.negImageIdx),
        negTextIds: tf.gather(inputIds, idx) as tf.Tensor2D,
        negTextMask: tf.gather(attentionMask, idx) as tf.Tensor2D,
      },
    });
    const grads = new Map(trainableNames(g.config, 1).map((n) => [n, Float32Array.from(r.grads.get(n)!.dataSync() as Float32Array)]));
    const losses = { itc: r.losses.itc, itm: r.losses.itm, itg: r.losses.itg };
    r.dispose();
    return { losses, grads };
  } finally {
    tf.engine().endScope();
    for (const t of params.values()) t.dispose();
  }
}

/**
 * Per-tensor comparison as the golden tolerances: |a−b| ≤ 1e-6 + 1e-3·max|b| elementwise (attention key biases,
 * whose exact gradient is 0, are compared with the absolute part only). Returns the failures.
 */
export function compareGrads(got: Map<string, Float32Array>, want: Map<string, Float32Array>): string[] {
  const bad: string[] = [];
  for (const [name, w] of want) {
    const g = got.get(name);
    if (!g || g.length !== w.length) {
      bad.push(`${name}: missing or wrong length`);
      continue;
    }
    const keyBias = /attention\.key\.bias$/.test(name);
    let maxAbs = 0;
    for (const x of w) maxAbs = Math.max(maxAbs, Math.abs(x));
    const tol = keyBias ? 1e-6 : 1e-6 + 1e-3 * maxAbs;
    let worst = 0;
    for (let i = 0; i < w.length; i++) worst = Math.max(worst, Math.abs(g[i]! - w[i]!));
    if (!(worst <= tol)) bad.push(`${name}: max |diff| ${worst.toExponential(3)} > ${tol.toExponential(3)}`);
  }
  return bad;
}
