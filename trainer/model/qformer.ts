/**
 * The Q-Former (LAVIS Qformer.py BertModel; HF Blip2QFormerModel): embeddings, post-LN BERT layers whose query rows
 * cross-attend to the image on layers i % cross_attention_freq == 0, and separate query/text FFNs.
 */
import { hasCrossAttention, type Blip2Config } from './config';
import { tf } from '../engine';
import { attention, gelu, layerNorm, linear, param, splitHeads } from './layers';
import type { Params } from './params';

/** Keys/values of one attention, [B, S, H] each (self-attention). */
export interface KeyValue {
  k: tf.Tensor3D;
  v: tf.Tensor3D;
}

/** Image keys/values of one cross-attention layer, already split into heads: [N, heads, P, d] each. */
export interface HeadKeyValue {
  k: tf.Tensor4D;
  v: tf.Tensor4D;
}

/** Additive mask value for blocked keys (Qformer.py get_extended_attention_mask). */
export const MASKED = -10000;

/** 0/1 key mask (1 = may attend) [B,Sq,Sk] or [B,Sk] -> additive [B,1,Sq|1,Sk]. */
export function additiveMask(mask: tf.Tensor): tf.Tensor4D {
  return tf.tidy(() => {
    const m = tf.cast(mask, 'float32');
    const m4 = m.rank === 2 ? tf.expandDims(tf.expandDims(m, 1), 1) : tf.expandDims(m, 1); // [B,1,1|Sq,Sk]
    return tf.mul(tf.sub(1, m4), MASKED) as tf.Tensor4D;
  });
}

/**
 * BertEmbeddings.forward: text = word[ids] + pos[0..T-1] (no token types), queries get no position embedding,
 * x = LayerNorm([queries ; text]). queries [B,Q,H], inputIds int32 [B,T] -> [B,Q+T,H].
 */
export function embeddings(params: Params, config: Blip2Config, queries?: tf.Tensor, inputIds?: tf.Tensor2D): tf.Tensor3D {
  const q = config.qformer;
  const parts: tf.Tensor[] = [];
  if (queries) parts.push(queries);
  if (inputIds) {
    const [b, t] = inputIds.shape;
    if (t > q.max_position_embeddings) throw new Error(`text length ${t} exceeds max_position_embeddings ${q.max_position_embeddings}`);
    const words = tf.reshape(tf.gather(param(params, 'embeddings.word_embeddings.weight'), tf.reshape(inputIds, [-1])), [b, t, q.hidden_size]); // [B,T,H]
    const pos = tf.slice(param(params, 'embeddings.position_embeddings.weight'), [0, 0], [t, q.hidden_size]); // [T,H]
    parts.push(tf.add(words, pos));
  }
  const x = parts.length === 1 ? parts[0]! : tf.concat(parts, 1); // [B,Q+T,H]
  return layerNorm(params, 'qformer.layernorm', x, q.layer_norm_eps) as tf.Tensor3D;
}

/** The query tokens broadcast to a batch: [1,Q,H] -> [B,Q,H]. */
export function queryTokens(params: Params, batch: number): tf.Tensor3D {
  const t = param(params, 'query_tokens'); // [1,Q,H]
  // A broadcast add to zeros rather than tf.tile: same values, and its gradient is one sum over the batch where
  // tile's adds up B slices one by one.
  const [, q, h] = t.shape as [number, number, number];
  return tf.add(tf.zeros([batch, q, h]), t) as tf.Tensor3D;
}

/** BertIntermediate + BertOutput: LN(x + W2·gelu(W1·x)). `kind` '' (text rows) or '_query' (query rows). */
function feedForward(params: Params, config: Blip2Config, layer: number, kind: '' | '_query', x: tf.Tensor): tf.Tensor {
  const p = `qformer.encoder.layer.${layer}`;
  const hidden = gelu(linear(params, `${p}.intermediate${kind}.dense`, x)); // [B,S,I]
  return layerNorm(params, `${p}.output${kind}.LayerNorm`, tf.add(x, linear(params, `${p}.output${kind}.dense`, hidden)), config.qformer.layer_norm_eps);
}

/**
 * Cross-attention keys/values of every cross layer for a batch of image embeddings [N,P,Dv] -> per layer
 * {k, v} [N,heads,P,d]. Computed once per image and reused by the ITC query pass and all ITM groups.
 */
export function projectImage(params: Params, config: Blip2Config, imageEmbeds: tf.Tensor3D): Map<number, HeadKeyValue> {
  const q = config.qformer;
  const out = new Map<number, HeadKeyValue>();
  const layers: number[] = [];
  for (let i = 0; i < q.num_layers; i++) if (hasCrossAttention(q, i)) layers.push(i);
  if (!layers.length) return out;
  for (const i of layers) {
    const p = `qformer.encoder.layer.${i}.crossattention.attention`;
    out.set(i, { k: splitHeads(linear(params, `${p}.key`, imageEmbeds), q.num_heads), v: splitHeads(linear(params, `${p}.value`, imageEmbeds), q.num_heads) }); // [N,n,P,d]
  }
  return out;
}

/** Select images of every layer's keys/values: [N,n,P,d] -> [R,n,P,d] for `rows` (int32 [R]) or a contiguous range. */
export function selectImages(cross: Map<number, HeadKeyValue>, rows: tf.Tensor1D | { begin: number; size: number }): Map<number, HeadKeyValue> {
  const out = new Map<number, HeadKeyValue>();
  for (const [i, kv] of cross) {
    const [n, heads, P, d] = kv.k.shape;
    if ('begin' in rows) {
      if (rows.begin === 0 && rows.size === n) out.set(i, kv);
      else out.set(i, { k: tf.slice(kv.k, rows.begin, rows.size), v: tf.slice(kv.v, rows.begin, rows.size) });
    } else {
      // Row selection as a product with a one-hot matrix: exact (each output is 1·x plus exact zeros), and its
      // gradient is a matmul too, far cheaper than gather/UnsortedSegmentSum over [N,n,P,d] blocks on wasm.
      // (int32 one-hot, then cast: tfjs-backend-wasm 4.22's OneHot writes integer bits into float32 outputs.)
      const pick = tf.cast(tf.oneHot(rows, n), 'float32'); // [R,N]
      const sel = (t: tf.Tensor4D) => tf.reshape(tf.matMul(pick, tf.reshape(t, [n, heads * P * d])), [rows.shape[0], heads, P, d]) as tf.Tensor4D;
      out.set(i, { k: sel(kv.k), v: sel(kv.v) });
    }
  }
  return out;
}

/** One pass's options (`LockstepStream` without the input and the links between streams). */
export type EncoderOptions = Omit<LockstepStream, 'h' | 'pastFrom' | 'keepKeyValues'>;

/** BertEncoder.forward over all layers (one stream of `qformerLockstep`). Returns the last hidden state and each layer's self keys/values. */
export function qformerEncoder(params: Params, config: Blip2Config, h: tf.Tensor3D, options: EncoderOptions): { out: tf.Tensor3D; kv: KeyValue[] } {
  const r = qformerLockstep(params, config, [{ h, ...options, keepKeyValues: true }]);
  return { out: r.out[0]!, kv: r.kv[0]! };
}

/** ITG head (BertOnlyMLMHead): dense -> gelu -> LayerNorm -> ·word_embeddingsᵀ + bias. x [N,H] -> [N,V]. */
export function lmHead(params: Params, config: Blip2Config, x: tf.Tensor2D): tf.Tensor2D {
  const t = layerNorm(params, 'cls.predictions.transform.LayerNorm', gelu(linear(params, 'cls.predictions.transform.dense', x)), config.qformer.layer_norm_eps);
  return tf.add(tf.matMul(t, param(params, 'embeddings.word_embeddings.weight'), false, true), param(params, 'cls.predictions.bias')) as tf.Tensor2D; // [N,V]
}

/** One pass through the Q-Former run by `qformerLockstep`. */
export interface LockstepStream {
  /** Input to layer 0, [B, S, H] (queries first, then text). */
  h: tf.Tensor3D;
  /** Leading rows that are queries (0 for text-only). */
  queryLength: number;
  /** Additive self-attention mask, broadcastable to [B,1,S,Sk]. */
  selfMask?: tf.Tensor;
  /** Index of an earlier stream whose per-layer keys/values this stream's keys are prefixed with (ITG). */
  pastFrom?: number;
  /** Per-layer keys/values of an earlier run to prefix this stream's keys with (ITG after a separate query pass). */
  past?: KeyValue[];
  /** Return this stream's self-attention keys/values of every layer (the `past_key_value` LAVIS caches). */
  keepKeyValues?: boolean;
  /** Image keys/values per cross layer (streams with queries). */
  cross?: Map<number, HeadKeyValue>;
  /**
   * Rows of the last layer's output that are read (default all). Keys/values still come from every row, so those
   * rows are exact; for a last layer whose other rows nobody reads (ITM's text rows, all but [CLS] in ITC's text pass).
   */
  lastLayerRows?: number;
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
 * Several passes through the Q-Former (ITC's query and text passes, ITM, ITG) advanced layer by layer together, so
 * that every projection whose weights they share runs as one GEMM over all their rows: self-attention query, key,
 * value and output, each cross-attention projection over all query rows, each FFN over all query (or text) rows.
 * Attention itself runs per stream (own masks, own image keys/values, ITG's cached query keys/values). Row for row
 * the arithmetic is that of `qformerEncoder`; only the GEMMs are larger, which on a CPU runs them 1.5–3× faster
 * (a [256, 256]·[256, 256] GEMM reaches ~60 GFLOP/s here, a [2304, 256]·[256, 256] one ~250).
 * Returns each stream's last hidden state (rows [0, lastLayerRows)), and its per-layer keys/values where asked for.
 * Each layer runs in its own tidy: its intermediates that backward does not need are freed at once (the tape keeps
 * its own references to what it saved).
 */
export function qformerLockstep(params: Params, config: Blip2Config, streams: LockstepStream[]): { out: tf.Tensor3D[]; kv: (KeyValue[] | undefined)[] } {
  const q = config.qformer;
  const H = q.hidden_size;
  const eps = q.layer_norm_eps;
  let hs = streams.map((s) => s.h);
  const keep = streams.flatMap((s, i) => (s.keepKeyValues ? [i] : []));
  const kv: (KeyValue[] | undefined)[] = streams.map((s) => (s.keepKeyValues ? [] : undefined));
  for (let layer = 0; layer < q.num_layers; layer++) {
    const last = layer === q.num_layers - 1;
    const p = `qformer.encoder.layer.${layer}`;
    const result = tf.tidy(() => {
      const shapes = hs.map((h) => [h.shape[0], h.shape[1]] as [number, number]);
      const outRows = streams.map((s, i) => Math.min(last ? (s.lastLayerRows ?? shapes[i]![1]) : shapes[i]![1], shapes[i]![1]));
      const outShapes = shapes.map(([b], i) => [b, outRows[i]!] as [number, number]);
      const hOut = hs.map((h, i) => (outRows[i] === shapes[i]![1] ? h : tf.slice(h, [0, 0, 0], [shapes[i]![0], outRows[i]!, H])));
      // Self-attention: keys and values of every row, queries of the output rows, each one GEMM.
      const x = stackRows(hs, H);
      const k = unstackRows(linear(params, `${p}.attention.attention.key`, x) as tf.Tensor2D, shapes);
      const v = unstackRows(linear(params, `${p}.attention.attention.value`, x) as tf.Tensor2D, shapes);
      const xOut = outRows.every((r, i) => r === shapes[i]![1]) ? x : stackRows(hOut, H);
      const qs = unstackRows(linear(params, `${p}.attention.attention.query`, xOut) as tf.Tensor2D, outShapes);
      const ctx = streams.map((s, i) => {
        let mask = s.selfMask;
        if (mask && outRows[i]! < shapes[i]![1] && mask.shape[2] !== 1) mask = tf.slice(mask, [0, 0, 0, 0], [mask.shape[0]!, mask.shape[1]!, outRows[i]!, mask.shape[3]!]);
        if (s.pastFrom !== undefined && s.pastFrom >= i) throw new Error(`stream ${i} takes keys/values from stream ${s.pastFrom}, which must come before it`);
        const past = s.pastFrom === undefined ? s.past?.[layer] : { k: k[s.pastFrom]!, v: v[s.pastFrom]! };
        const keys = past ? tf.concat([past.k, k[i]!], 1) : k[i]!;
        const values = past ? tf.concat([past.v, v[i]!], 1) : v[i]!;
        return attention(qs[i]!, keys, values, q.num_heads, mask); // [B,S',H]
      });
      const attnOut = linear(params, `${p}.attention.output.dense`, stackRows(ctx, H));
      const a = unstackRows(layerNorm(params, `${p}.attention.output.LayerNorm`, tf.add(xOut, attnOut), eps) as tf.Tensor2D, outShapes);
      // Query rows: cross-attention (on cross layers), then the query FFN; text rows: the text FFN.
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
            if (!cross) throw new Error(`layer ${layer} has cross-attention but stream ${i} has no image keys/values`);
            return attention(cq[j]!, cross.k, cross.v, q.num_heads); // the image mask is all ones
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
