/**
 * The Q-Former (LAVIS Qformer.py BertModel; HF Blip2QFormerModel), written as the paper draws it: learned query
 * tokens and text tokens share each layer's self-attention; every `cross_attention_frequency`-th layer the query rows
 * cross-attend to the image; query rows and text rows each have their own feed-forward network.
 *
 * `qformerLayer` is one BertLayer; `qformerEncoder` is the loop over it (BertEncoder). The fast path that advances
 * several passes through the layers together lives beside it in `qformer-lockstep.ts` and computes the same numbers.
 */
import { hasCrossAttention, type Blip2Config } from './config';
import { tf } from '../engine';
import { attention, gelu, layerNorm, linear, param, splitHeads } from './layers';
import { ModelInputError } from './errors';
import type { Params } from './params';

/** Keys/values of one self-attention, [B, S, H] each. */
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
  const q = config.qformer_config;
  const parts: tf.Tensor[] = [];
  if (queries) parts.push(queries);
  if (inputIds) {
    const [b, t] = inputIds.shape;
    if (t > q.max_position_embeddings) throw new ModelInputError(`text length ${t} exceeds max_position_embeddings ${q.max_position_embeddings}: shorten the captions (max_txt_len)`);
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
export function feedForward(params: Params, config: Blip2Config, layer: number, kind: '' | '_query', x: tf.Tensor): tf.Tensor {
  const p = `qformer.encoder.layer.${layer}`;
  const hidden = gelu(linear(params, `${p}.intermediate${kind}.dense`, x)); // [..., I]
  return layerNorm(params, `${p}.output${kind}.LayerNorm`, tf.add(x, linear(params, `${p}.output${kind}.dense`, hidden)), config.qformer_config.layer_norm_eps); // [..., H]
}

/**
 * Cross-attention keys/values of every cross layer for a batch of image embeddings [N,P,Dv] -> per layer
 * {k, v} [N,heads,P,d]. Computed once per image and reused by the ITC query pass and all ITM groups.
 */
export function projectImage(params: Params, config: Blip2Config, imageEmbeds: tf.Tensor3D): Map<number, HeadKeyValue> {
  const q = config.qformer_config;
  const out = new Map<number, HeadKeyValue>();
  for (let i = 0; i < q.num_hidden_layers; i++) {
    if (!hasCrossAttention(q, i)) continue;
    const p = `qformer.encoder.layer.${i}.crossattention.attention`;
    out.set(i, { k: splitHeads(linear(params, `${p}.key`, imageEmbeds), q.num_attention_heads), v: splitHeads(linear(params, `${p}.value`, imageEmbeds), q.num_attention_heads) }); // [N,n,P,d]
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
      // tfjs's oneHot needs a depth of 2 or more: with one image every row picks it.
      const pick = n === 1 ? tf.ones([rows.shape[0], 1]) : tf.cast(tf.oneHot(rows, n), 'float32'); // [R,N]
      const sel = (t: tf.Tensor4D) => tf.reshape(tf.matMul(pick, tf.reshape(t, [n, heads * P * d])), [rows.shape[0], heads, P, d]) as tf.Tensor4D;
      out.set(i, { k: sel(kv.k), v: sel(kv.v) });
    }
  }
  return out;
}

/** What one pass through the Q-Former needs besides its input (the same for every layer). */
export interface PassOptions {
  /** Leading rows of the input that are queries (0 for a text-only pass). */
  queryLength: number;
  /** Additive self-attention mask, broadcastable to [B,1,S,S_keys]. */
  selfMask?: tf.Tensor;
  /** Image keys/values per cross layer (passes with queries). */
  cross?: Map<number, HeadKeyValue>;
  /** Per-layer keys/values of an earlier pass that prefix this pass's keys (ITG after the ITC query pass). */
  past?: KeyValue[];
  /**
   * Rows of the last layer's output that are read (default all). Keys/values still come from every row, so those
   * rows are exact; for a last layer whose other rows nobody reads (ITM's text rows, all but [CLS] in ITC's text pass).
   */
  lastLayerRows?: number;
  /** Return this pass's self-attention keys/values of every layer (the `past_key_value` LAVIS caches). */
  keepKeyValues?: boolean;
}

/** One layer's part of a pass. */
export interface LayerOptions {
  queryLength: number;
  selfMask?: tf.Tensor;
  /** This layer's image keys/values (a cross-attention layer, in a pass with queries). */
  image?: HeadKeyValue;
  /** Keys/values prefixed to this layer's own (ITG: the query pass's, all visible). */
  past?: KeyValue;
  /** Output rows computed (default all): only the first `outputRows` rows ask queries. */
  outputRows?: number;
}

/**
 * One Q-Former layer (BertLayer.forward with query_length): h [B, S, H] with S = queries + text, queries first.
 *  1. Self-attention over [queries ; text] (with `past` keys/values in front), then Add & LayerNorm.
 *  2. Query rows: cross-attention to the image on cross layers, then Add & LayerNorm; the query FFN.
 *  3. Text rows: the text FFN.
 * Returns the layer output [B, R, H] (R = outputRows) and its self-attention keys/values [B, S, H].
 */
export function qformerLayer(params: Params, config: Blip2Config, layer: number, h: tf.Tensor3D, options: LayerOptions): { out: tf.Tensor3D; kv: KeyValue } {
  const c = config.qformer_config;
  const p = `qformer.encoder.layer.${layer}`;
  const [B, S, H] = h.shape;
  const R = Math.min(options.outputRows ?? S, S);
  const hOut = R === S ? h : (tf.slice(h, [0, 0, 0], [B, R, H]) as tf.Tensor3D); // [B,R,H]

  // 1. Self-attention (BertSelfAttention + BertSelfOutput): keys/values of every row, queries of the output rows.
  const k = linear(params, `${p}.attention.attention.key`, h) as tf.Tensor3D; // [B,S,H]
  const v = linear(params, `${p}.attention.attention.value`, h) as tf.Tensor3D; // [B,S,H]
  const q = linear(params, `${p}.attention.attention.query`, hOut) as tf.Tensor3D; // [B,R,H]
  const keys = options.past ? tf.concat([options.past.k, k], 1) : k; // [B,S_past+S,H]
  const values = options.past ? tf.concat([options.past.v, v], 1) : v; // [B,S_past+S,H]
  let mask = options.selfMask;
  if (mask && R < S && mask.shape[2] !== 1) mask = tf.slice(mask, [0, 0, 0, 0], [mask.shape[0]!, mask.shape[1]!, R, mask.shape[3]!]); // [B,1,R,S_keys]
  const context = attention(q, keys, values, c.num_attention_heads, mask); // [B,R,H]
  const a = layerNorm(params, `${p}.attention.output.LayerNorm`, tf.add(hOut, linear(params, `${p}.attention.output.dense`, context)), c.layer_norm_eps) as tf.Tensor3D; // [B,R,H]

  // 2. Query rows: cross-attention to the image (every cross_attention_frequency-th layer), then the query FFN.
  const Q = Math.min(options.queryLength, R);
  const parts: tf.Tensor[] = [];
  if (Q > 0) {
    let aq = Q === R ? a : (tf.slice(a, [0, 0, 0], [B, Q, H]) as tf.Tensor3D); // [B,Q,H]
    if (hasCrossAttention(c, layer)) {
      if (!options.image) throw new ModelInputError(`layer ${layer} cross-attends to the image, but no image keys/values were given`);
      const cq = linear(params, `${p}.crossattention.attention.query`, aq) as tf.Tensor3D; // [B,Q,H]
      const cctx = attention(cq, options.image.k, options.image.v, c.num_attention_heads); // [B,Q,H] (the image mask is all ones)
      aq = layerNorm(params, `${p}.crossattention.output.LayerNorm`, tf.add(aq, linear(params, `${p}.crossattention.output.dense`, cctx)), c.layer_norm_eps) as tf.Tensor3D;
    }
    parts.push(feedForward(params, config, layer, '_query', aq)); // [B,Q,H]
  }
  // 3. Text rows: the text FFN.
  if (Q < R) parts.push(feedForward(params, config, layer, '', Q === 0 ? a : tf.slice(a, [0, Q, 0], [B, R - Q, H]))); // [B,R-Q,H]
  const out = (parts.length === 1 ? parts[0]! : tf.concat(parts, 1)) as tf.Tensor3D; // [B,R,H]
  return { out, kv: { k, v } };
}

/**
 * BertEncoder.forward: `qformerLayer` over every layer. h [B,S,H] -> the last hidden state [B,S|lastLayerRows,H],
 * and each layer's self-attention keys/values when `keepKeyValues`. Each layer runs in its own tidy: what backward
 * does not need is freed at once (the tape keeps its own references to what it saved).
 */
export function qformerEncoder(params: Params, config: Blip2Config, h: tf.Tensor3D, options: PassOptions): { out: tf.Tensor3D; kv: KeyValue[] } {
  const layers = config.qformer_config.num_hidden_layers;
  const kv: KeyValue[] = [];
  let x = h;
  for (let layer = 0; layer < layers; layer++) {
    const [out, k, v] = tf.tidy(() => {
      const r = qformerLayer(params, config, layer, x, {
        queryLength: options.queryLength,
        selfMask: options.selfMask,
        image: options.cross?.get(layer),
        past: options.past?.[layer],
        outputRows: layer === layers - 1 ? options.lastLayerRows : undefined,
      });
      return options.keepKeyValues ? [r.out, r.kv.k, r.kv.v] : [r.out];
    }) as tf.Tensor3D[];
    x = out!;
    if (options.keepKeyValues) kv.push({ k: k!, v: v! });
  }
  return { out: x, kv };
}
