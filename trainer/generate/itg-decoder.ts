/**
 * The Q-Former's ITG head as a decoder for generation (stage 1; LAVIS Blip2Qformer.generate): the query pass
 * cross-attends to the image once and its keys/values open every layer's cache; the text starts with [DEC] and each
 * appended token costs one position: it attends to all queries and to the text before it (the ITG mask, spec §5.4),
 * runs the text feed-forward (no cross-attention for text rows), and the LM head (`cls`) gives the next token.
 * The end token LAVIS uses is [SEP]. Hugging Face holds the [DEC] start token in `input_ids`: give search.ts
 * `prefixTokens: [dec_token_id]` (generateWithItg does), and LAVIS's max 30 / min 10 count as they do there.
 */
import { tf } from '../engine';
import { layerNorm, lmHead, projectImage, qformerEncoder, qformerLayer, queryTokens, embeddings, type Blip2Config, type KeyValue, type Params } from '../model';
import type { StepDecoder } from './search';

export class CachedItgDecoder implements StepDecoder {
  private cache: KeyValue[];
  private last!: tf.Tensor2D; // last text row's hidden state [rows, H]
  private textLength = 0;

  /** `imageEmbeds` [B,P,Dv]: ln_vision of the ViT output (the Q-Former's cross-attention input). Appends [DEC]. */
  constructor(private readonly params: Params, private readonly config: Blip2Config, imageEmbeds: tf.Tensor3D) {
    const B = imageEmbeds.shape[0];
    this.cache = tf.tidy(() => {
      const cross = projectImage(params, config, imageEmbeds);
      const h = embeddings(params, config, queryTokens(params, B));
      return qformerEncoder(params, config, h, { queryLength: config.num_query_tokens, cross, keepKeyValues: true }).kv as unknown as tf.TensorContainer;
    }) as unknown as KeyValue[];
    this.append(new Array<number>(B).fill(config.lavis_config.dec_token_id));
  }

  get vocabSize(): number {
    return this.config.qformer_config.vocab_size;
  }

  get rows(): number {
    return this.cache[0]!.k.shape[0];
  }

  /** Text positions so far ([DEC] included). */
  get length(): number {
    return this.textLength;
  }

  logits(): Float32Array {
    return tf.tidy(() => lmHead(this.params, this.config, this.last).dataSync() as Float32Array);
  }

  append(tokens: readonly number[]): void {
    const q = this.config.qformer_config;
    if (tokens.length !== this.rows) throw new Error(`append: ${tokens.length} tokens for ${this.rows} rows`);
    if (this.textLength >= q.max_position_embeddings) throw new Error(`append: the text would pass max_position_embeddings ${q.max_position_embeddings}`);
    const t = this.textLength;
    const next = tf.tidy(() => {
      // BertEmbeddings for one token at position t: LayerNorm(word + pos[t]).
      const words = tf.gather(this.params.get('embeddings.word_embeddings.weight')!, tf.tensor1d([...tokens], 'int32')); // [B,H]
      const pos = tf.slice(this.params.get('embeddings.position_embeddings.weight')!, [t, 0], [1, q.hidden_size]); // [1,H]
      let h = tf.reshape(layerNorm(this.params, 'qformer.layernorm', tf.add(words, pos), q.layer_norm_eps), [tokens.length, 1, q.hidden_size]) as tf.Tensor3D;
      const kv: KeyValue[] = [];
      for (let i = 0; i < this.cache.length; i++) {
        // Every cached key is visible to the new row (all queries, the text before it), so no mask.
        const r = qformerLayer(this.params, this.config, i, h, { queryLength: 0, past: this.cache[i] });
        h = r.out;
        kv.push({ k: tf.concat([this.cache[i]!.k, r.kv.k], 1), v: tf.concat([this.cache[i]!.v, r.kv.v], 1) });
      }
      return { kv, last: tf.reshape(h, [tokens.length, q.hidden_size]) as tf.Tensor2D } as unknown as tf.TensorContainer;
    }) as unknown as { kv: KeyValue[]; last: tf.Tensor2D };
    this.replace(next.kv, next.last);
    this.textLength++;
  }

  select(rows: readonly number[]): void {
    const next = tf.tidy(() => {
      const i = tf.tensor1d([...rows], 'int32');
      return { kv: this.cache.map((c) => ({ k: tf.gather(c.k, i) as tf.Tensor3D, v: tf.gather(c.v, i) as tf.Tensor3D })), last: tf.gather(this.last, i) as tf.Tensor2D } as unknown as tf.TensorContainer;
    }) as unknown as { kv: KeyValue[]; last: tf.Tensor2D };
    this.replace(next.kv, next.last);
  }

  private replace(kv: KeyValue[], last: tf.Tensor2D): void {
    this.dispose();
    this.cache = kv;
    this.last = last;
  }

  dispose(): void {
    for (const c of this.cache) { c.k.dispose(); c.v.dispose(); }
    this.last?.dispose();
    this.cache = [];
  }
}
