// Generation on tiny random models (OPT of stage 2, the Q-Former's ITG head of stage 1): the key/value-cached
// decoders give the logits and tokens of full-prefix recomputation at every step, greedy and beam search pick the
// same tokens on both, beam search's best score is at least greedy's under the same scoring, and the length limits
// and repetition penalty hold.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { initEngine, tf } from '../engine';
import { createParams, disposeParams, embeddings, lmHead, OptLanguageModel, optDecoder, optLmHead, presetConfig, projectImage, qformerEncoder, queryTokens, stage2Step, type Blip2Config, type Params } from '../model';
import { itgPass } from '../model/itg';
import { beamSearch, CachedItgDecoder, CachedOptDecoder, generateWithItg, generateWithOpt, optSoftPrompt, greedySearch, sequenceScore, type GenerationOptions, type PromptTokens, type StepDecoder } from '.';

const config: Blip2Config = presetConfig('tiny');
const o = config.text_config;
let params: Params;

beforeAll(async () => {
  await initEngine();
  params = createParams(config, 7, { groups: ['language_model'] });
  // createParams draws small weights; scale the token table so the random model has peaked, varied predictions.
  const name = 'language_model.model.decoder.embed_tokens.weight';
  const t = params.get(name)!;
  params.set(name, tf.mul(t, 40));
  t.dispose();
});
afterAll(() => disposeParams(params));

/** The reference: every step recomputes the whole prefix with optDecoder (no cache). */
class UncachedOptDecoder implements StepDecoder {
  private prompt: PromptTokens;
  private soft: tf.Tensor3D;
  constructor(soft: tf.Tensor3D, prompt: PromptTokens) {
    this.soft = tf.clone(soft);
    this.prompt = { ids: prompt.ids.map((r) => [...r]), mask: prompt.mask.map((r) => [...r]) };
  }
  get vocabSize() { return o.vocab_size; }
  get rows() { return this.prompt.ids.length; }
  logits(): Float32Array {
    return tf.tidy(() => {
      const h = optDecoder(params, config, this.soft, this.prompt);
      const [B, S, D] = h.shape;
      const last = tf.reshape(tf.slice(h, [0, S - 1, 0], [B, 1, D]), [B, D]) as tf.Tensor2D;
      return optLmHead(params, last).dataSync() as Float32Array;
    });
  }
  append(tokens: readonly number[]) {
    this.prompt.ids.forEach((r, i) => r.push(tokens[i]!));
    this.prompt.mask.forEach((r) => r.push(1));
  }
  select(rows: readonly number[]) {
    const next = tf.gather(this.soft, tf.tensor1d([...rows], 'int32')) as tf.Tensor3D;
    this.soft.dispose();
    this.soft = next;
    this.prompt = { ids: rows.map((r) => [...this.prompt.ids[r]!]), mask: rows.map((r) => [...this.prompt.mask[r]!]) };
  }
  dispose() { this.soft.dispose(); }
}

const softPrompt = (seed: number, batch = 2) => tf.randomNormal([batch, 4, o.hidden_size], 0, 1, 'float32', seed) as tf.Tensor3D;
// Row 1 is left-padded, as LAVIS pads batched VQA prompts.
const PROMPT: PromptTokens = { ids: [[o.bos_token_id, 17, 40], [o.pad_token_id, o.bos_token_id, 5]], mask: [[1, 1, 1], [0, 1, 1]] };

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let scale = 0;
  let diff = 0;
  for (let i = 0; i < b.length; i++) {
    scale = Math.max(scale, Math.abs(b[i]!));
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
  }
  return diff / scale;
}

describe('key/value-cached OPT decoding', () => {
  test('every step\'s logits equal full-prefix recomputation; each new token adds one cached position', () => {
    const soft = softPrompt(1);
    const cached = new CachedOptDecoder(params, config, soft, PROMPT);
    const full = new UncachedOptDecoder(soft, PROMPT);
    expect(cached.length).toBe(4 + 3);
    const steps = [[3, 9], [50, 60], [7, 7], [119, 0], [2, 33]];
    // float32 on both paths, different operation shapes (one row against the cache, or the whole prefix): rounding
    // differs at ~1e-6 of the logits' scale; 1e-4 leaves room and still fails on any wrong key, mask or position.
    expect(maxRelDiff(cached.logits(), full.logits())).toBeLessThan(1e-4);
    for (const t of steps) {
      cached.append(t);
      full.append(t);
      expect(maxRelDiff(cached.logits(), full.logits())).toBeLessThan(1e-4);
    }
    expect(cached.length).toBe(4 + 3 + steps.length);
    // Reordering rows (a beam step) moves the cache with them.
    cached.select([1, 1, 0]);
    full.select([1, 1, 0]);
    cached.append([4, 5, 6]);
    full.append([4, 5, 6]);
    expect(maxRelDiff(cached.logits(), full.logits())).toBeLessThan(1e-4);
    cached.dispose();
    full.dispose();
    soft.dispose();
  });

  test('the frozen stage-2 language model (widened one layer at a time) decodes as its float32 parameters do', async () => {
    const soft = softPrompt(9);
    const lm = await OptLanguageModel.fromParams(params, config);
    const frozen = new CachedOptDecoder(lm, config, soft, PROMPT);
    const plain = new CachedOptDecoder(params, config, soft, PROMPT);
    for (const t of [[3, 9], [50, 60], [7, 7]]) {
      frozen.append(t);
      plain.append(t);
    }
    // The same float32 values through the same ops: equal up to the engine's rounding (1e-6 of the scale).
    expect(maxRelDiff(frozen.logits(), plain.logits())).toBeLessThan(1e-6);
    frozen.dispose();
    plain.dispose();
    soft.dispose();
  });

  const options: GenerationOptions = { eosTokenId: 50, maxLength: 10, minLength: 2, repetitionPenalty: 1, lengthPenalty: 1 };

  test('greedy and beam search pick the same tokens with and without the cache', () => {
    const soft = softPrompt(2);
    const run = <T>(make: () => StepDecoder & { dispose(): void }, f: (d: StepDecoder) => T): T => {
      const d = make();
      try { return f(d); } finally { d.dispose(); }
    };
    const g1 = run(() => new CachedOptDecoder(params, config, soft, PROMPT), (d) => greedySearch(d, options));
    const g2 = run(() => new UncachedOptDecoder(soft, PROMPT), (d) => greedySearch(d, options));
    expect(g1.map((g) => g.tokens)).toEqual(g2.map((g) => g.tokens));
    const b1 = run(() => new CachedOptDecoder(params, config, soft, PROMPT), (d) => beamSearch(d, { ...options, beams: 3 }));
    const b2 = run(() => new UncachedOptDecoder(soft, PROMPT), (d) => beamSearch(d, { ...options, beams: 3 }));
    expect(b1.map((b) => b.tokens)).toEqual(b2.map((b) => b.tokens));
    b1.forEach((b, i) => expect(b.score).toBeCloseTo(b2[i]!.score, 3));
    expect(g1[0]!.tokens.length).toBeGreaterThan(0);
    soft.dispose();
  });

  test('beam search\'s best score is at least greedy\'s under the same scoring, and its reported score is that scoring', () => {
    for (const seed of [3, 4, 5, 6]) {
      for (const lengthPenalty of [0, 1]) {
        const o2 = { ...options, lengthPenalty };
        const soft = softPrompt(seed, 1);
        const prompt = { ids: [PROMPT.ids[0]!], mask: [PROMPT.mask[0]!] };
        const withDecoder = <T>(f: (d: CachedOptDecoder) => T): T => {
          const d = new CachedOptDecoder(params, config, soft, prompt);
          try { return f(d); } finally { d.dispose(); }
        };
        const greedy = withDecoder((d) => greedySearch(d, o2))[0]!;
        const beam = withDecoder((d) => beamSearch(d, { ...o2, beams: 5 }))[0]!;
        const greedyScore = withDecoder((d) => sequenceScore(d, greedy.tokens, greedy.finished, o2));
        const beamScore = withDecoder((d) => sequenceScore(d, beam.tokens, beam.finished, o2));
        // Sums of ≤ 11 float64 log-probabilities from float32 logits: agreement to 1e-9 is ample.
        expect(beamScore).toBeCloseTo(beam.score, 9);
        expect(beam.score).toBeGreaterThanOrEqual(greedyScore - 1e-9);
        soft.dispose();
      }
    }
  });

  test('the end token is refused before minLength; maxLength caps the length; a strong repetition penalty avoids repeats', () => {
    const soft = softPrompt(8, 1);
    const prompt = { ids: [PROMPT.ids[0]!], mask: [PROMPT.mask[0]!] };
    const greedy = (o2: GenerationOptions) => {
      const d = new CachedOptDecoder(params, config, soft, prompt);
      try { return greedySearch(d, o2)[0]!; } finally { d.dispose(); }
    };
    const free = greedy({ eosTokenId: 0, maxLength: 12 });
    // Make the model's first choice the end token: without a minimum it stops at once, with one it cannot.
    const first = free.tokens[0]!;
    expect(greedy({ eosTokenId: first, maxLength: 12 }).tokens).toEqual([]);
    const atLeast = greedy({ eosTokenId: first, maxLength: 12, minLength: 4 });
    expect(atLeast.tokens.length).toBeGreaterThanOrEqual(4);
    expect(atLeast.tokens.slice(0, 4)).not.toContain(first);
    expect(greedy({ eosTokenId: o.vocab_size + 1, maxLength: 6 }).tokens.length).toBe(6);
    const penalised = greedy({ eosTokenId: o.vocab_size + 1, maxLength: 12, repetitionPenalty: 1e4 });
    expect(new Set(penalised.tokens).size).toBe(12);
    soft.dispose();
  });
});

describe('key/value-cached Q-Former ITG decoding (stage 1)', () => {
  let qp: Params;
  beforeAll(() => {
    qp = createParams(config, 11, { stage: 1 });
    const name = 'embeddings.word_embeddings.weight';
    const t = qp.get(name)!;
    qp.set(name, tf.mul(t, 40)); // peaked, varied predictions from the random head (it is tied to this table)
    t.dispose();
  });
  afterAll(() => disposeParams(qp));
  const image = (seed: number, batch = 2) => tf.randomNormal([batch, 17, config.qformer_config.encoder_hidden_size], 0, 1, 'float32', seed) as tf.Tensor3D;

  /** The reference: the query pass, then the whole [DEC]-led text with the ITG mask, recomputed every step. */
  class UncachedItgDecoder implements StepDecoder {
    private texts: number[][];
    private img: tf.Tensor3D;
    constructor(img: tf.Tensor3D) {
      this.img = tf.clone(img);
      this.texts = Array.from({ length: img.shape[0] }, () => [config.lavis_config.dec_token_id]);
    }
    get vocabSize() { return config.qformer_config.vocab_size; }
    get rows() { return this.texts.length; }
    logits(): Float32Array {
      return tf.tidy(() => {
        const B = this.rows;
        const cross = projectImage(qp, config, this.img);
        const past = qformerEncoder(qp, config, embeddings(qp, config, queryTokens(qp, B)), { queryLength: config.num_query_tokens, cross, keepKeyValues: true }).kv;
        const pass = itgPass(qp, config, this.texts, this.texts.map((r) => r.map(() => 1)), past);
        const out = qformerEncoder(qp, config, pass.h, { queryLength: 0, selfMask: pass.selfMask, past }).out; // [B,T,H]
        const [, T, H] = out.shape;
        return lmHead(qp, config, tf.reshape(tf.slice(out, [0, T - 1, 0], [B, 1, H]), [B, H]) as tf.Tensor2D).dataSync() as Float32Array;
      });
    }
    append(tokens: readonly number[]) { this.texts.forEach((r, i) => r.push(tokens[i]!)); }
    select(rows: readonly number[]) {
      const next = tf.gather(this.img, tf.tensor1d([...rows], 'int32')) as tf.Tensor3D;
      this.img.dispose();
      this.img = next;
      this.texts = rows.map((r) => [...this.texts[r]!]);
    }
    dispose() { this.img.dispose(); }
  }

  test('every step\'s logits equal recomputing the query pass and the whole text with the ITG mask', () => {
    const img = image(1);
    const cached = new CachedItgDecoder(qp, config, img);
    const full = new UncachedItgDecoder(img);
    expect(cached.length).toBe(1);
    // float32 both ways; the tolerance argument of the OPT test applies.
    expect(maxRelDiff(cached.logits(), full.logits())).toBeLessThan(1e-4);
    for (const t of [[5, 9], [50, 60], [7, 7], [80, 3]]) {
      cached.append(t);
      full.append(t);
      expect(maxRelDiff(cached.logits(), full.logits())).toBeLessThan(1e-4);
    }
    cached.select([1, 0, 0]);
    full.select([1, 0, 0]);
    cached.append([4, 5, 6]);
    full.append([4, 5, 6]);
    expect(maxRelDiff(cached.logits(), full.logits())).toBeLessThan(1e-4);
    expect(cached.length).toBe(6);
    cached.dispose();
    full.dispose();
    img.dispose();
  });

  test('greedy and beam search: same tokens with and without the cache; beam ≥ greedy under the same scoring', () => {
    const img = image(2);
    const opts: GenerationOptions = { eosTokenId: config.lavis_config.sep_token_id, maxLength: 8, minLength: 2, lengthPenalty: 1 };
    const run = <T>(d: StepDecoder & { dispose(): void }, f: (d: StepDecoder) => T): T => { try { return f(d); } finally { d.dispose(); } };
    const g1 = run(new CachedItgDecoder(qp, config, img), (d) => greedySearch(d, opts));
    const g2 = run(new UncachedItgDecoder(img), (d) => greedySearch(d, opts));
    expect(g1.map((g) => g.tokens)).toEqual(g2.map((g) => g.tokens));
    const b1 = run(new CachedItgDecoder(qp, config, img), (d) => beamSearch(d, { ...opts, beams: 3 }));
    const b2 = run(new UncachedItgDecoder(img), (d) => beamSearch(d, { ...opts, beams: 3 }));
    expect(b1.map((b) => b.tokens)).toEqual(b2.map((b) => b.tokens));
    const one = tf.slice(img, [0, 0, 0], [1, -1, -1]) as tf.Tensor3D;
    const g = run(new CachedItgDecoder(qp, config, one), (d) => greedySearch(d, opts))[0]!;
    const b = run(new CachedItgDecoder(qp, config, one), (d) => beamSearch(d, { ...opts, beams: 3 }))[0]!;
    const gScore = run(new CachedItgDecoder(qp, config, one), (d) => sequenceScore(d, g.tokens, g.finished, opts));
    expect(b.score).toBeGreaterThanOrEqual(gScore - 1e-9);
    one.dispose();
    img.dispose();
  });
});

describe('from the ViT output to tokens', () => {
  test('the stage-2 soft prompt is the training step\'s inputs_opt; both stages generate within the length limits', async () => {
    const p2 = createParams(config, 3, { stage: 2 });
    const lm = await OptLanguageModel.fromParams(params, config);
    const vision = tf.randomNormal([2, 17, config.vision_config.hidden_size], 0, 1, 'float32', 5) as tf.Tensor3D;
    const soft = optSoftPrompt(p2, config, vision);
    const ids = tf.tensor2d([[o.bos_token_id], [o.bos_token_id]], [2, 1], 'int32');
    const mask = tf.tensor2d([[1], [1]], [2, 1], 'int32');
    const r = stage2Step(p2, lm, { visionHidden: vision, optInputIds: ids, optAttentionMask: mask }, { grads: false, activations: true });
    expect(maxRelDiff(soft.dataSync() as Float32Array, r.activations.get('inputsOpt')!.dataSync() as Float32Array)).toBeLessThan(1e-6);
    r.dispose();
    const opts = { eosTokenId: config.lavis_config.newline_token_id, maxLength: 6, minLength: 2, beams: 3 };
    const viaHelper = generateWithOpt(p2, lm, config, vision, opts);
    const d = new CachedOptDecoder(lm, config, soft, { ids: [[o.bos_token_id], [o.bos_token_id]], mask: [[1], [1]] });
    const direct = beamSearch(d, opts);
    d.dispose();
    expect(viaHelper).toEqual(direct);
    for (const g of viaHelper) expect(g.tokens.length).toBeLessThanOrEqual(6);
    const p1 = createParams(config, 11, { stage: 1 });
    const itg = generateWithItg(p1, config, vision, { eosTokenId: config.lavis_config.sep_token_id, maxLength: 5, minLength: 5, beams: 1 });
    // [DEC] counts in HF's lengths (generateWithItg passes it as a prefix token): at most 5 = [DEC] + 4 tokens.
    expect(itg.map((g) => g.tokens.length)).toEqual([4, 4]);
    for (const g of itg) expect(g.tokens).not.toContain(config.lavis_config.sep_token_id);
    for (const t of [soft, ids, mask, vision]) t.dispose();
    disposeParams(p1);
    disposeParams(p2);
  });
});
