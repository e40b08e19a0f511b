// A BERT-style Q-Former block, small: everything a training step of the model meets, forward and backward.
import { beforeAll, expect, test } from 'vitest';
import '@tensorflow/tfjs-backend-cpu';
import { initEngine, tf } from './index';

const B = 2; // batch
const Q = 4; // query tokens
const T = 5; // text tokens
const H = 16; // hidden
const HEADS = 2;
const DH = H / HEADS;
const FFN = 32;
const S = 6; // image tokens
const HI = 12; // image width
const V = 20; // vocabulary

type Params = Record<string, tf.Tensor>;

function makeParams(): Params {
  const rnd = (shape: number[], seed: number) => tf.randomNormal(shape, 0, 0.3, 'float32', seed);
  const p: Params = {};
  let seed = 1;
  const linear = (name: string, out: number, inp: number) => {
    p[`${name}.weight`] = rnd([out, inp], seed++);
    p[`${name}.bias`] = rnd([out], seed++);
  };
  p['word_embeddings.weight'] = rnd([V, H], seed++);
  p['query_tokens'] = rnd([1, Q, H], seed++);
  for (const n of ['query', 'key', 'value', 'output']) linear(`attention.${n}`, H, H);
  linear('crossattention.query', H, H);
  linear('crossattention.key', H, HI);
  linear('crossattention.value', H, HI);
  linear('crossattention.output', H, H);
  linear('intermediate', FFN, H);
  linear('output', H, FFN);
  for (const n of ['LayerNorm', 'attention.LayerNorm', 'crossattention.LayerNorm']) {
    p[`${n}.weight`] = tf.add(1, rnd([H], seed++));
    p[`${n}.bias`] = rnd([H], seed++);
  }
  linear('itm_head', 2, H);
  return p;
}

// y = x·Wᵀ + b, x [..., in] → [..., out] (3-D x against a 2-D weight: the fold path)
const linear = (p: Params, name: string, x: tf.Tensor) =>
  tf.add(tf.matMul(x, p[`${name}.weight`]!, false, true), p[`${name}.bias`]!);

function layerNorm(p: Params, name: string, x: tf.Tensor): tf.Tensor {
  const { mean, variance } = tf.moments(x, -1, true);
  const normed = tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-12)));
  return tf.add(tf.mul(normed, p[`${name}.weight`]!), p[`${name}.bias`]!);
}

const gelu = (x: tf.Tensor) => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.div(x, Math.SQRT2))));

// [B, L, H] → [B, heads, L, dh]
const heads = (x: tf.Tensor) => tf.transpose(tf.reshape(x, [x.shape[0]!, x.shape[1]!, HEADS, DH]), [0, 2, 1, 3]);

function attention(p: Params, name: string, x: tf.Tensor, kv: tf.Tensor, mask?: tf.Tensor): tf.Tensor {
  const q = heads(linear(p, `${name}.query`, x)); // [B, heads, L, dh]
  const k = heads(linear(p, `${name}.key`, kv)); // [B, heads, Lk, dh]
  const v = heads(linear(p, `${name}.value`, kv));
  let scores = tf.div(tf.matMul(q, k, false, true), Math.sqrt(DH)); // [B, heads, L, Lk]
  if (mask) scores = tf.add(scores, mask);
  const probs = tf.softmax(scores, -1);
  const ctx = tf.matMul(probs, v); // [B, heads, L, dh]
  const merged = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [x.shape[0]!, x.shape[1]!, H]);
  return layerNorm(p, `${name}.LayerNorm`, tf.add(linear(p, `${name}.output`, merged), x));
}

function loss(p: Params, ids: tf.Tensor, image: tf.Tensor, padMask: tf.Tensor, labels: tf.Tensor): tf.Scalar {
  const words = tf.gather(p['word_embeddings.weight']!, ids); // [B, T, H]
  const queries = tf.tile(p['query_tokens']!, [B, 1, 1]); // [B, Q, H]
  let x = layerNorm(p, 'LayerNorm', tf.concat([queries, words], 1)); // [B, Q+T, H]
  const additive = tf.mul(tf.sub(1, tf.reshape(padMask, [B, 1, 1, Q + T])), -10000); // [B, 1, 1, Q+T]
  x = attention(p, 'attention', x, x, additive);
  const q = tf.slice(x, [0, 0, 0], [B, Q, H]); // [B, Q, H]
  const t = tf.slice(x, [0, Q, 0], [B, T, H]);
  const qc = attention(p, 'crossattention', q, image); // [B, Q, H]
  let y = tf.concat([qc, t], 1);
  y = layerNorm(p, 'LayerNorm', tf.add(linear(p, 'output', gelu(linear(p, 'intermediate', y))), y));
  const pooled = tf.max(y, 1); // [B, H]  (max over tokens, as ITC's max over queries)
  const logits = linear(p, 'itm_head', tf.maximum(pooled, tf.mean(y, 1))); // [B, 2]
  const logProbs = tf.logSoftmax(logits, -1);
  const ce = tf.neg(tf.mean(tf.sum(tf.mul(tf.oneHot(labels, 2), logProbs), -1)));
  const lm = tf.logSoftmax(tf.matMul(t, p['word_embeddings.weight']!, false, true), -1); // tied decoder [B, T, V]
  const lmLoss = tf.neg(tf.mean(tf.sum(tf.mul(tf.oneHot(ids, V), lm), -1)));
  return tf.add(ce, lmLoss) as tf.Scalar;
}

function run() {
  const p = tf.tidy(makeParams);
  const names = Object.keys(p).sort();
  const ids = tf.tensor2d([[1, 5, 7, 19, 0], [3, 3, 8, 2, 11]], [B, T], 'int32');
  const image = tf.randomNormal([B, S, HI], 0, 1, 'float32', 99);
  const padMask = tf.tensor2d([[1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0, 0]]);
  const labels = tf.tensor1d([1, 0], 'int32');
  const f = (...xs: tf.Tensor[]) => loss(Object.fromEntries(names.map((n, i) => [n, xs[i]!])), ids, image, padMask, labels);
  const { value, grads } = tf.valueAndGrads(f)(names.map((n) => p[n]!));
  const out = { loss: value.dataSync()[0]!, grads: grads.map((g) => g.dataSync().slice()), names };
  tf.dispose([value, ...grads, ...Object.values(p), ids, image, padMask, labels]);
  return out;
}

beforeAll(async () => {
  expect(await initEngine({ engine: 'wasm' })).toBe('wasm');
});

test('a BERT block forward+backward on wasm equals the cpu backend, without leaks', async () => {
  const before = tf.memory().numTensors;
  const dataIds = tf.engine().backend.numDataIds(); // backend-level: kernel temporaries and shared data
  const wasm = run();
  expect(tf.memory().numTensors).toBe(before);
  expect(tf.engine().backend.numDataIds()).toBe(dataIds);
  await tf.setBackend('cpu');
  const cpu = run();
  await tf.setBackend('wasm');
  expect(wasm.loss).toBeCloseTo(cpu.loss, 4);
  for (let i = 0; i < cpu.names.length; i++) {
    const w = wasm.grads[i]!;
    const c = cpu.grads[i]!;
    const scale = Math.max(1e-3, ...Array.from(c, Math.abs));
    let err = 0;
    for (let j = 0; j < c.length; j++) err = Math.max(err, Math.abs(w[j]! - c[j]!));
    expect(err / scale, cpu.names[i]).toBeLessThan(1e-4);
    expect(Array.from(c).some((x) => x !== 0), `${cpu.names[i]} has a gradient`).toBe(true);
  }
});
