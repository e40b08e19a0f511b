/**
 * The fast path of the Q-Former: several passes (ITC's query and text passes, ITM, ITG) advanced layer by layer
 * together, so that every projection whose weights they share runs as one GEMM over all their rows. Row for row
 * the arithmetic is that of `qformerLayer` / `qformerEncoder` (qformer.ts), which `qformer-lockstep.test.ts` checks.
 */
import { hasCrossAttention, type Blip2Config } from './config';
import { tf } from '../engine';
import { attention, layerNorm, linear } from './layers';
import { ModelInputError } from './errors';
import { feedForward, type KeyValue, type PassOptions } from './qformer';
import type { Params } from './params';

/** One pass run by `qformerLockstep`. */
export interface LockstepStream extends PassOptions {
  /** Input to layer 0, [B, S, H] (queries first, then text). */
  h: tf.Tensor3D;
  /** Index of an earlier stream whose per-layer keys/values this stream's keys are prefixed with (ITG). */
  pastFrom?: number;
}

const rowsOf = (t: tf.Tensor) => t.shape[0]! * t.shape[1]!;

/** Rows of several [B_i, S_i, H] tensors stacked into one [Σ B_i·S_i, H]. */
function stackRows(parts: tf.Tensor[], width: number): tf.Tensor2D {
  const flat = parts.map((t) => tf.reshape(t, [rowsOf(t), width]));
  return (flat.length === 1 ? flat[0]! : tf.concat(flat, 0)) as tf.Tensor2D;
}

/** The inverse of stackRows: [Σ B_i·S_i, H] back into [B_i, S_i, H] pieces. */
function unstackRows(x: tf.Tensor2D, shapes: [number, number][]): tf.Tensor3D[] {
  const width = x.shape[1];
  const pieces = shapes.length === 1 ? [x] : tf.split(x, shapes.map(([b, s]) => b * s), 0);
  return pieces.map((p, i) => tf.reshape(p, [shapes[i]![0], shapes[i]![1], width]) as tf.Tensor3D);
}

/**
 * `qformerEncoder` for several streams at once. Every projection whose weights they share is one GEMM over all
 * their rows: self-attention query, key, value and output, each cross-attention projection over all query rows,
 * each FFN over all query (or text) rows. Attention itself runs per stream (own masks, own image keys/values, ITG's
 * cached query keys/values). Only the GEMMs are larger, which on a CPU runs them 1.5–3× faster (a
 * [256, 256]·[256, 256] GEMM reaches ~60 GFLOP/s here, a [2304, 256]·[256, 256] one ~250).
 * Returns each stream's last hidden state (rows [0, lastLayerRows)), and its per-layer keys/values where asked for.
 */
export function qformerLockstep(params: Params, config: Blip2Config, streams: LockstepStream[]): { out: tf.Tensor3D[]; kv: (KeyValue[] | undefined)[] } {
  const q = config.qformer_config;
  const H = q.hidden_size;
  const eps = q.layer_norm_eps;
  streams.forEach((s, i) => {
    if (s.pastFrom !== undefined && s.pastFrom >= i) throw new ModelInputError(`stream ${i} takes keys/values from stream ${s.pastFrom}, which must come before it`);
  });
  let hs = streams.map((s) => s.h);
  const keep = streams.flatMap((s, i) => (s.keepKeyValues ? [i] : []));
  const kv: (KeyValue[] | undefined)[] = streams.map((s) => (s.keepKeyValues ? [] : undefined));
  for (let layer = 0; layer < q.num_hidden_layers; layer++) {
    const last = layer === q.num_hidden_layers - 1;
    const p = `qformer.encoder.layer.${layer}`;
    const result = tf.tidy(() => {
      const shapes = hs.map((h) => [h.shape[0], h.shape[1]] as [number, number]);
      const outRows = streams.map((s, i) => Math.min(last ? (s.lastLayerRows ?? shapes[i]![1]) : shapes[i]![1], shapes[i]![1]));
      const outShapes = shapes.map(([b], i) => [b, outRows[i]!] as [number, number]);
      const hOut = hs.map((h, i) => (outRows[i] === shapes[i]![1] ? h : tf.slice(h, [0, 0, 0], [shapes[i]![0], outRows[i]!, H])));
      // 1. Self-attention: keys and values of every row, queries of the output rows, each one GEMM.
      const x = stackRows(hs, H);
      const k = unstackRows(linear(params, `${p}.attention.attention.key`, x) as tf.Tensor2D, shapes);
      const v = unstackRows(linear(params, `${p}.attention.attention.value`, x) as tf.Tensor2D, shapes);
      const xOut = outRows.every((r, i) => r === shapes[i]![1]) ? x : stackRows(hOut, H);
      const qs = unstackRows(linear(params, `${p}.attention.attention.query`, xOut) as tf.Tensor2D, outShapes);
      const ctx = streams.map((s, i) => {
        let mask = s.selfMask;
        if (mask && outRows[i]! < shapes[i]![1] && mask.shape[2] !== 1) mask = tf.slice(mask, [0, 0, 0, 0], [mask.shape[0]!, mask.shape[1]!, outRows[i]!, mask.shape[3]!]);
        const past = s.pastFrom === undefined ? s.past?.[layer] : { k: k[s.pastFrom]!, v: v[s.pastFrom]! };
        const keys = past ? tf.concat([past.k, k[i]!], 1) : k[i]!;
        const values = past ? tf.concat([past.v, v[i]!], 1) : v[i]!;
        return attention(qs[i]!, keys, values, q.num_attention_heads, mask); // [B,S',H]
      });
      const attnOut = linear(params, `${p}.attention.output.dense`, stackRows(ctx, H));
      const a = unstackRows(layerNorm(params, `${p}.attention.output.LayerNorm`, tf.add(xOut, attnOut), eps) as tf.Tensor2D, outShapes);
      // 2. Query rows: cross-attention (on cross layers), then the query FFN; 3. text rows: the text FFN.
      const Qs = streams.map((s, i) => Math.min(s.queryLength, outRows[i]!));
      const withQ = streams.map((_, i) => i).filter((i) => Qs[i]! > 0);
      const withT = streams.map((_, i) => i).filter((i) => Qs[i]! < outRows[i]!);
      const queryShapes = withQ.map((i) => [outShapes[i]![0], Qs[i]!] as [number, number]);
      const textShapes = withT.map((i) => [outShapes[i]![0], outRows[i]! - Qs[i]!] as [number, number]);
      const aq = withQ.map((i) => (Qs[i] === outRows[i] ? a[i]! : tf.slice(a[i]!, [0, 0, 0], [outShapes[i]![0], Qs[i]!, H])));
      let queryOut: tf.Tensor3D[] = [];
      if (withQ.length) {
        let xq = stackRows(aq, H);
        if (hasCrossAttention(q, layer)) {
          const cq = unstackRows(linear(params, `${p}.crossattention.attention.query`, xq) as tf.Tensor2D, queryShapes);
          const cctx = withQ.map((i, j) => {
            const cross = streams[i]!.cross?.get(layer);
            if (!cross) throw new ModelInputError(`layer ${layer} has cross-attention but stream ${i} has no image keys/values`);
            return attention(cq[j]!, cross.k, cross.v, q.num_attention_heads); // the image mask is all ones
          });
          const co = linear(params, `${p}.crossattention.output.dense`, stackRows(cctx, H));
          xq = layerNorm(params, `${p}.crossattention.output.LayerNorm`, tf.add(xq, co), eps) as tf.Tensor2D;
        }
        queryOut = unstackRows(feedForward(params, config, layer, '_query', xq) as tf.Tensor2D, queryShapes);
      }
      let textOut: tf.Tensor3D[] = [];
      if (withT.length) {
        const at = withT.map((i) => (Qs[i] === 0 ? a[i]! : tf.slice(a[i]!, [0, Qs[i]!, 0], [outShapes[i]![0], outRows[i]! - Qs[i]!, H])));
        textOut = unstackRows(feedForward(params, config, layer, '', stackRows(at, H)) as tf.Tensor2D, textShapes);
      }
      const next = streams.map((_, i) => {
        const qi = withQ.indexOf(i);
        const ti = withT.indexOf(i);
        if (qi < 0) return textOut[ti]!;
        if (ti < 0) return queryOut[qi]!;
        return tf.concat([queryOut[qi]!, textOut[ti]!], 1) as tf.Tensor3D;
      });
      return [...next, ...keep.flatMap((i) => [k[i]!, v[i]!])];
    }) as tf.Tensor3D[];
    hs = result.slice(0, streams.length);
    keep.forEach((i, j) => kv[i]!.push({ k: result[streams.length + 2 * j]!, v: result[streams.length + 2 * j + 1]! }));
  }
  return { out: hs, kv };
}
