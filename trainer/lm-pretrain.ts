/**
 * Pre-training a small OPT-shaped language model on captions (causal next-token loss, AdamW), for the synthetic
 * demo's stage 2. BLIP-2's stage 2 needs a frozen LM that already knows the language (the released models use
 * OPT-2.7b/6.7b); no such checkpoint can be downloaded here, and a randomly initialised frozen LM knows nothing: its
 * loss cannot fall far below ln(vocabulary), whatever the soft prompt says. This trains one, on text alone, and
 * writes it with BLIP-2's names (`language_model.model.decoder.*`), so that stage 2 loads it as it would load OPT.
 *
 * A real LLM has learned to read its context; one trained on captions that start its context has not, and stage 2
 * then has nothing to teach the soft prompt (the LM writes the same caption whatever precedes it). So the texts are
 * trained after a context: `documents` put the token embeddings of a context (another caption of the same image,
 * or the same one) at the `prefixLength` positions that the soft prompt takes in stage 2, and the text (a caption,
 * or a question in LAVIS's VQA prompt with its answer) after them. Stage 2 then has to make the query outputs say
 * what a caption would. A question is a document's `prompt`: read, not trained on, so the LM never learns to start
 * a text with "Question:" (stage 2's captions did, when the prompt was part of the trained text).
 */
import { AdamW } from './optim';
import { tf, gradients } from './engine';
import {
  createParams, crossEntropySum, optDecoder, optLmHead, optTargets, paramManifest, saveParams, type Blip2Config, type Params,
} from './model';
import type { CaptionTokenizer } from '../dataloader';
import { mulberry32 } from '../common';
import { beamSearch, CachedOptDecoder, leftPaddedPrompt } from './generate';
import { questionType, singleAnswerAccuracy } from './evaluate';
import { VQA_PROMPT, VQA_SEARCH } from './inference';

const EMBED_TOKENS = 'language_model.model.decoder.embed_tokens.weight';

/** A context's token ids (BOS dropped), cut or filled with the pad id to the `P` soft-prompt positions. */
function contextIds(tokenizer: CaptionTokenizer, context: string, P: number, pad: number): number[] {
  const ids = P ? tokenizer.encodePrompt(context).slice(1, P + 1) : [];
  return [...ids, ...Array<number>(P - ids.length).fill(pad)];
}

/** The LM's token embeddings of `ids` ([rows × P] flat) as the soft prompt stage 2 would give: [rows, P, D]. */
function contextPrefix(params: Params, ids: readonly number[], rows: number, P: number, D: number): tf.Tensor3D {
  return tf.reshape(tf.gather(params.get(EMBED_TOKENS)!, tf.tensor1d(ids as number[], 'int32')), [rows, P, D]) as tf.Tensor3D;
}

/**
 * A text read after a context. With a `prompt`, the sequence is `prompt` then `text`, and only `text` is trained on
 * (a question's answer): the prompt's tokens are read, not predicted, as instruction tuning masks its prompts. A
 * question's words are a random draw that no context determines, and left in the loss they outweigh its one-token
 * answer many times over.
 */
export interface LmDocument {
  context: string;
  prompt?: string;
  text: string;
}

export interface LmPretrainOptions {
  config: Blip2Config;
  /** The LM's tokenizer (kind `opt`). */
  tokenizer: CaptionTokenizer;
  captions: readonly string[];
  /**
   * Texts read after a context: each `text` follows `prefixLength` positions holding the token embeddings of its
   * `context` (cut or filled with the pad token's), the positions stage 2's soft prompt takes. Trained on these
   * instead of `captions` when given, so that the frozen LM learns to read what precedes the text, as BLIP-2
   * relies on its LLM to do.
   */
  documents?: ReadonlyArray<LmDocument>;
  /** Positions of the context (stage 2: `num_query_tokens`). Default 0 (no context). */
  prefixLength?: number;
  steps: number;
  batchSize: number;
  lr: number;
  seed: number;
  /** Called after every step with its loss (mean over the batch's target tokens). */
  onStep?: (step: number, loss: number) => void;
}

/** Trains `language_model.*` from a fresh initialisation; returns the parameters and every step's loss. */
export function pretrainLanguageModel(o: LmPretrainOptions): { params: Params; losses: number[] } {
  const { config, tokenizer } = o;
  if (!o.captions.length && !o.documents?.length) throw new RangeError('no captions or documents to train the language model on');
  const specs = paramManifest(config).filter((p) => p.group === 'language_model').map((p) => ({ name: p.name, shape: [...p.shape] }));
  const params = createParams(config, o.seed, { groups: ['language_model'] });
  const values = new Map(specs.map((s) => [s.name, Float32Array.from(params.get(s.name)!.dataSync() as Float32Array)]));
  const adam = new AdamW(specs, { weightDecay: 0.01 });
  const rand = mulberry32(o.seed);
  const D = config.text_config.hidden_size;
  const P = o.prefixLength ?? 0;
  const pad = config.text_config.pad_token_id;
  const losses: number[] = [];
  for (let step = 1; step <= o.steps; step++) {
    const docs: LmDocument[] = o.documents?.length
      ? Array.from({ length: o.batchSize }, () => o.documents![Math.floor(rand() * o.documents!.length)]!)
      : Array.from({ length: o.batchSize }, () => ({ context: '', text: o.captions[Math.floor(rand() * o.captions.length)]! }));
    const t = tokenizer.encodeBatch(docs.map((d) => (d.prompt === undefined ? d.text : d.prompt + d.text)));
    // Per row, the positions not trained on: the prompt's tokens, BOS included (none without a prompt).
    const promptLengths = docs.map((d) => (d.prompt === undefined ? 0 : Math.min(t.seqLength, tokenizer.encodePrompt(d.prompt).length)));
    const contexts = docs.flatMap((d) => contextIds(tokenizer, d.context, P, pad));
    const rows = (a: Int32Array) => Array.from({ length: t.batchSize }, (_, b) => Array.from(a.subarray(b * t.seqLength, (b + 1) * t.seqLength)));
    const text = { ids: rows(t.inputIds), mask: rows(t.attentionMask) };
    const targets = rowTargets(config, P, text.ids, promptLengths);
    const xs = specs.map((s) => params.get(s.name)!);
    const r = gradients(() => {
      const prefix = P ? contextPrefix(params, contexts, t.batchSize, P, D) : (tf.zeros([t.batchSize, 0, D]) as tf.Tensor3D);
      const h = optDecoder(params, config, prefix, text); // [B,P+T,D]
      const flat = tf.reshape(h, [-1, D]) as tf.Tensor2D;
      const picked = tf.gather(flat, tf.tensor1d(targets.rowIndex, 'int32')) as tf.Tensor2D;
      return tf.div(crossEntropySum(optLmHead(params, picked), tf.tensor1d(targets.targets, 'int32'), 0), targets.targets.length);
    }, xs);
    const grads = new Map(specs.map((s, i) => [s.name, (r.grads[i] ? r.grads[i]!.dataSync() : new Float32Array(values.get(s.name)!.length)) as Float32Array]));
    const loss = r.value.dataSync()[0]!;
    r.value.dispose();
    for (const g of r.grads) g?.dispose();
    adam.update(values, grads, o.lr);
    for (const s of specs) {
      params.get(s.name)!.dispose();
      params.set(s.name, tf.tensor(values.get(s.name)!, s.shape, 'float32'));
    }
    losses.push(loss);
    o.onStep?.(step, loss);
  }
  return { params, losses };
}

/** `optTargets` with a prompt length per row: the rows' (flat position, next token) pairs of the whole batch. */
function rowTargets(config: Blip2Config, prefixLength: number, ids: number[][], promptLengths: readonly number[]): { rowIndex: number[]; targets: number[] } {
  const S = prefixLength + (ids[0]?.length ?? 0);
  const rowIndex: number[] = [];
  const targets: number[] = [];
  ids.forEach((row, b) => {
    const r = optTargets(config, prefixLength, [row], promptLengths[b]!);
    for (const i of r.rowIndex) rowIndex.push(b * S + i);
    targets.push(...r.targets);
  });
  return { rowIndex, targets };
}

/** What `contextQaAccuracy` measured: percent of questions answered right, over all and by question type. */
export interface ContextQaReport {
  accuracy: number;
  questions: number;
  byType: Record<string, { accuracy: number; questions: number }>;
}

/**
 * How well the LM answers questions about a context it is given as stage 2 would give it: each sample's first
 * caption as token embeddings at the `prefixLength` soft-prompt positions, then LAVIS's VQA prompt, beam 5, at most
 * 10 new tokens, up to "\n", scored as `blip2 eval --task vqa` scores (one reference answer). Zero-shot VQA reads
 * the image only through this LM, so this is its ceiling: a soft prompt that said exactly what the caption says
 * would score this, and no better.
 */
export function contextQaAccuracy(
  params: Params, config: Blip2Config, tokenizer: CaptionTokenizer, samples: ReadonlyArray<{ captions: readonly string[]; qa: ReadonlyArray<{ question: string; answer: string }> }>, prefixLength: number,
): ContextQaReport {
  const P = prefixLength;
  const D = config.text_config.hidden_size;
  const pad = config.text_config.pad_token_id;
  const newline = tokenizer.newlineTokenId;
  if (newline === undefined) throw new RangeError('the LM tokenizer has no token for "\\n" (what ends an answer)');
  const types = new Map<string, { right: number; questions: number }>();
  let right = 0;
  let questions = 0;
  for (const s of samples) {
    const context = s.captions[0];
    if (context === undefined || !s.qa.length) continue;
    const ids = contextIds(tokenizer, context.trim().toLowerCase(), P, pad);
    // As `InferenceModel.ask` asks: the prompt cut to max_txt_len tokens, left-padded, LAVIS's VQA search.
    const prompts = s.qa.map((q) => tokenizer.encodePrompt(VQA_PROMPT.replace('{}', q.question)).slice(0, config.lavis_config.max_txt_len));
    const soft = tf.tidy(() => tf.tile(contextPrefix(params, ids, 1, P, D), [prompts.length, 1, 1]) as tf.Tensor3D);
    const decoder = new CachedOptDecoder(params, config, soft, leftPaddedPrompt(prompts, pad));
    let answers: string[];
    try {
      answers = beamSearch(decoder, { ...VQA_SEARCH, eosTokenId: newline, repetitionPenalty: 1 }).map((g) => tokenizer.decode(g.tokens));
    } finally {
      decoder.dispose();
      soft.dispose();
    }
    s.qa.forEach((q, i) => {
      const a = singleAnswerAccuracy(answers[i]!, q.answer);
      const type = questionType(q.question);
      const t = types.get(type) ?? { right: 0, questions: 0 };
      t.right += a;
      t.questions++;
      types.set(type, t);
      right += a;
      questions++;
    });
  }
  return {
    accuracy: questions ? (100 * right) / questions : 0,
    questions,
    byType: Object.fromEntries([...types].map(([k, t]) => [k, { accuracy: (100 * t.right) / t.questions, questions: t.questions }])),
  };
}

/** Writes the trained LM as safetensors with BLIP-2's names. */
export async function saveLanguageModel(path: string, params: Params, metadata: Record<string, string> = {}): Promise<void> {
  await saveParams(path, params, { ...metadata, contents: 'language_model' });
}
