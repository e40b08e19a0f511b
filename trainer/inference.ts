/**
 * A trained model for inference from a checkpoint: captions and short answers for images, as LAVIS generates them.
 *
 * - `inferenceSettings` finds what a checkpoint needs beside its trainable weights: the model preset, the Q-Former
 *   tokenizer, and for stage 2 the frozen LM and its tokenizer. They come from the job's config (`--config`, or the
 *   run's own `job.resolved.json` when the checkpoint is a run directory or a checkpoint inside one), then from
 *   explicit options, which win.
 * - `loadInferenceModel` verifies the checkpoint (every checksum), regenerates the frozen ViT from the seed the
 *   checkpoint records (the one it was trained against), and loads the stage's trainable parameters; stage 2 also
 *   loads the frozen OPT. `readImages` applies the evaluation transform (resize, CLIP normalisation).
 * - `caption`: stage 2 with the OPT decoder after the soft prompt (and an optional text prompt), "\n" ending the
 *   caption; stage 1 with the Q-Former's ITG head from [DEC], [SEP] ending it. `ask`: stage 2 only, the prompt
 *   "Question: {} Short answer:", length penalty 0 (LAVIS `predict_answers` for OPT).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ConfigError, loadJobConfig, safetensorsHeader, safetensorsNames, UsageError } from '../common';
import { CaptionTokenizer, preCaption, transformImage } from '../dataloader';
import { rerankTopK, topK } from './eval';
import { readCheckpointMeta } from './checkpoint';
import { modelConfigFor, resolveWeights } from './core';
import { initEngine, tf } from './engine';
import { generateWithItg, generateWithOpt, leftPaddedPrompt, type SearchOptions } from './generate';
import {
  createParams, disposeParams, HF_CONFIG_FILE, imageItcFeatures, isHfFolder, itmScores, lnVision, loadModelConfig, loadParams, matchCheckpoint,
  OptLanguageModel, paramManifest, presetConfig, projectImage, textItcFeatures, trainableGroups, VisionBackbone,
  type Blip2Config, type Params,
} from './model';

const OPT_EMBED_TOKENS = 'language_model.model.decoder.embed_tokens.weight';
const RUN_CONFIG = 'job.resolved.json';

/** LAVIS's zero-shot VQA prompt (its eval configs, for OPT and FlanT5). */
export const VQA_PROMPT = 'Question: {} Short answer:';
/** LAVIS's VQA generation (its eval configs): beam 5, at most 10 new tokens, at least 1, no length penalty. */
export const VQA_SEARCH = { beams: 5, maxLength: 10, minLength: 1, lengthPenalty: 0 } as const;

export interface InferenceSettings {
  /** The checkpoint as given (a checkpoint directory, a job's run directory, or safetensors). */
  checkpoint: string;
  preset: string;
  /** A model config.json overriding the preset ('' = none). */
  modelConfigFile: string;
  /** The Q-Former's tokenizer.json. */
  tokenizer: string;
  /** Stage 2: the LM's tokenizer.json. */
  lmTokenizer: string;
  /** Stage 2: the frozen LM's safetensors ('' = none given). */
  languageModel: string;
  /** The job config the settings were read from, if any. */
  configFile?: string;
}

export interface InferenceSettingsOptions {
  checkpoint: string;
  /** A job config (YAML or JSON); default: the run's job.resolved.json when there is one. */
  configFile?: string;
  /** The data folder: tokenizer.json and opt-tokenizer/tokenizer.json inside it. */
  data?: string;
  languageModel?: string;
  preset?: string;
  /** Refuse settings without the Q-Former's tokenizer (default true; an export of a weights file needs none). */
  needTokenizer?: boolean;
}

/** The run's job.resolved.json for a run directory, or for a checkpoint directory under its checkpoint.dir. */
function runConfigOf(checkpoint: string): string | undefined {
  const p = resolve(checkpoint);
  if (existsSync(join(p, RUN_CONFIG))) return join(p, RUN_CONFIG);
  // <runDir>/checkpoints/step-N, the default layout; the config must name that folder as its checkpoint.dir.
  const candidate = join(dirname(dirname(p)), RUN_CONFIG);
  if (!basename(p).startsWith('step-') || !existsSync(candidate)) return undefined;
  try {
    const c = JSON.parse(readFileSync(candidate, 'utf8')) as { checkpoint?: { dir?: unknown } };
    return c.checkpoint?.dir === dirname(p) ? candidate : undefined;
  } catch {
    return undefined;
  }
}

/** What the checkpoint needs beside its weights: explicit options, then the job config, then defaults. */
export function inferenceSettings(o: InferenceSettingsOptions): InferenceSettings {
  if (!existsSync(o.checkpoint)) throw new UsageError(`--checkpoint ${o.checkpoint}: no such file or directory`);
  const configFile = o.configFile ?? runConfigOf(o.checkpoint);
  let job: ReturnType<typeof loadJobConfig>['config'] | undefined;
  if (configFile) {
    try {
      job = loadJobConfig({ file: configFile, env: {} }).config;
    } catch (e) {
      throw new UsageError(e instanceof ConfigError ? e.message : `config file ${configFile}: ${(e as Error).message}`);
    }
  }
  const data = o.data ? resolve(o.data) : undefined;
  // A Hugging Face checkpoint folder carries the OPT tokenizer.json (the Hub's BLIP-2 repositories do) and its config.json.
  const hf = statSync(o.checkpoint).isDirectory() && isHfFolder(o.checkpoint) ? resolve(o.checkpoint) : undefined;
  const hfTokenizer = hf && existsSync(join(hf, 'tokenizer.json')) ? join(hf, 'tokenizer.json') : '';
  const settings: InferenceSettings = {
    checkpoint: o.checkpoint,
    preset: o.preset ?? job?.model.preset ?? 'tiny',
    modelConfigFile: o.preset ? '' : job?.model.config ?? '',
    tokenizer: data ? join(data, 'tokenizer.json') : job?.data.tokenizer ?? '',
    lmTokenizer: data ? join(data, 'opt-tokenizer', 'tokenizer.json') : job?.data.lmTokenizer ?? hfTokenizer,
    languageModel: o.languageModel ? resolve(o.languageModel) : job?.model.languageModel ?? '',
    configFile,
  };
  if (!settings.tokenizer && !hf && o.needTokenizer !== false) {
    throw new UsageError(`--checkpoint ${o.checkpoint}: no job config beside it to name the tokenizer; give --data DIR (the folder with tokenizer.json) or --config job.yaml`);
  }
  return settings;
}

/**
 * The model config.json the settings name, or that of a Hugging Face folder given as the checkpoint; '' when the
 * preset alone gives the shapes.
 */
export function modelConfigOf(s: InferenceSettings): string {
  if (s.modelConfigFile) return s.modelConfigFile;
  const dir = resolve(s.checkpoint);
  return statSync(dir).isDirectory() && isHfFolder(dir) && existsSync(join(dir, HF_CONFIG_FILE)) ? join(dir, HF_CONFIG_FILE) : '';
}

/** The side of the images the model takes (to transform them before the model is loaded). */
export function inferenceImageSize(s: InferenceSettings): number {
  const file = modelConfigOf(s);
  return (file ? loadModelConfig(file) : presetConfig(s.preset)).vision_config.image_size;
}

export interface CaptionOptions {
  /** Beam width (1 = greedy). LAVIS: 5. */
  beams: number;
  /** At most this many generated tokens (stage 1: [DEC] included, as LAVIS counts). LAVIS: 30. */
  maxLength: number;
  /** The end token is refused before this many tokens. LAVIS caption eval: 8. */
  minLength: number;
  /** Stage 2: a text prompt after the soft prompt (LAVIS's COCO evaluation: "a photo of"); '' = none. */
  prompt?: string;
  repetitionPenalty?: number;
  lengthPenalty?: number;
}

/** One image, decoded and transformed for the model. */
export interface InputImage {
  path: string;
  pixels: Float32Array;
}

/** Image files through the evaluation transform (resize to the model's side, bicubic; CLIP normalisation). */
export async function readImages(paths: readonly string[], imageSize: number): Promise<InputImage[]> {
  const out: InputImage[] = [];
  for (const path of paths) {
    let bytes: Buffer;
    try {
      if (statSync(path).isDirectory()) throw new UsageError(`${path}: a directory, not an image file`);
      bytes = readFileSync(path);
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`${path}: no such image file`);
    }
    try {
      out.push({ path, pixels: (await transformImage(bytes, { mode: 'eval', imageSize })).pixels });
    } catch (e) {
      throw new UsageError(`${path}: not an image that can be decoded (${(e as Error).message.split('\n')[0]})`);
    }
  }
  return out;
}

/**
 * Lets the event loop run between batches of a long evaluation: timers, gRPC and NATS callbacks, and the lease
 * keeper's ticks (it stops renewing leases when this thread has not run for 2 minutes).
 */
export const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** What retrieval reads beyond the query side: the text embeddings, both projections and the ITM head. */
const RETRIEVAL_HEADS = ['embeddings.word_embeddings.weight', 'vision_projection.weight', 'text_projection.weight', 'itm_head.weight'];

/** Stage and retrieval heads of a checkpoint's weights (from the names its files hold). */
function describeWeights(checkpoint: string): { stage: 1 | 2; canRetrieve: boolean } {
  const source = resolveWeights(checkpoint);
  const held = new Set(source.files.flatMap((f) => safetensorsNames(f)));
  const stage: 1 | 2 = source.checkpoint ? (source.checkpoint.stage === 2 ? 2 : 1) : held.has('language_projection.weight') ? 2 : 1;
  return { stage, canRetrieve: stage === 1 || RETRIEVAL_HEADS.every((n) => held.has(n)) };
}

/** Encoded images (e.g. read from a dataset's shards) through the evaluation transform; `name` identifies one in errors. */
export async function readImageBytes(items: ReadonlyArray<{ name: string; bytes: Uint8Array }>, imageSize: number): Promise<InputImage[]> {
  const out: InputImage[] = [];
  for (const { name, bytes } of items) {
    try {
      out.push({ path: name, pixels: (await transformImage(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), { mode: 'eval', imageSize })).pixels });
    } catch (e) {
      throw new UsageError(`image ${name}: not an image that can be decoded (${(e as Error).message.split('\n')[0]})`);
    }
  }
  return out;
}

/** A trained stage-1 or stage-2 model, ready to caption images and (stage 2) answer questions about them. */
export class InferenceModel {
  private constructor(
    readonly stage: 1 | 2,
    readonly config: Blip2Config,
    /** The checkpoint directory (or safetensors) the weights came from. */
    readonly source: string,
    private readonly params: Params,
    private readonly vision: VisionBackbone,
    /** The Q-Former's tokenizer: stage 1 decodes with it; a stage-2 model from a Hugging Face folder may have none. */
    private readonly qformerTokenizer: CaptionTokenizer | undefined,
    private readonly lm?: { model: OptLanguageModel; tokenizer: CaptionTokenizer; newline: number },
    /** The Q-Former's ITC and ITM heads and text side are loaded (stage 1, or weights that hold them). */
    readonly canRetrieve: boolean = stage === 1,
    /** The trainer checkpoint's directory and step (undefined for bare safetensors). */
    readonly checkpointDir?: string,
    readonly step?: number,
  ) {}

  get imageSize(): number {
    return this.config.vision_config.image_size;
  }

  /**
   * What a checkpoint is, without loading it: its stage (a trainer checkpoint records it; bare weights are stage 2
   * when they hold `language_projection`), and whether it holds the Q-Former's text side and ITC/ITM heads.
   */
  static inspect(checkpoint: string): { stage: 1 | 2; canRetrieve: boolean } {
    return describeWeights(checkpoint);
  }

  /** Loads the checkpoint and what it needs (`inferenceSettings`); bad input throws UsageError naming it. */
  static async load(s: InferenceSettings): Promise<InferenceModel> {
    const source = resolveWeights(s.checkpoint);
    const ck = source.checkpoint;
    const held = new Set(source.files.flatMap((f) => safetensorsNames(f)));
    const stage: 1 | 2 = ck ? (ck.stage === 2 ? 2 : 1) : held.has('language_projection.weight') ? 2 : 1;
    if (!ck && !held.has('vision_model.embeddings.patch_embedding.weight')) {
      throw new UsageError(`--checkpoint ${s.checkpoint}: neither a trainer checkpoint (no checkpoint.json) nor weights holding the ViT`);
    }
    // A Hugging Face folder's config.json gives the shapes unless a model config is named.
    const modelConfigFile = s.modelConfigFile || source.hf?.config;
    const base = modelConfigFile ? loadModelConfig(modelConfigFile) : presetConfig(s.preset);
    // Stage 2 reads no caption through the Q-Former: its tokenizer is needed for stage 1 only.
    let tokenizer: CaptionTokenizer | undefined;
    let config = base;
    if (stage === 1 || s.tokenizer) {
      if (!s.tokenizer || !existsSync(s.tokenizer)) throw new UsageError(`tokenizer ${s.tokenizer || '(none)'}: not found (the Q-Former's tokenizer.json; give --data DIR)`);
      tokenizer = CaptionTokenizer.fromFile(s.tokenizer, { maxLength: base.lavis_config.max_txt_len });
      config = modelConfigFor(s.preset, modelConfigFile, tokenizer);
    }
    let lm: { files: string[]; hf: boolean; tokenizer: CaptionTokenizer; newline: number } | undefined;
    if (stage === 2) {
      // The LM: named, in the weights, or in the files the checkpoint's job read its frozen parts from.
      const fromFrozen = ck?.frozenFrom && ck.frozenFrom.files.some((f) => safetensorsHeader(f).has(OPT_EMBED_TOKENS)) ? ck.frozenFrom : undefined;
      const lmSource = s.languageModel ? resolveWeights(s.languageModel) : held.has(OPT_EMBED_TOKENS) ? source : fromFrozen ? { files: fromFrozen.files, hf: fromFrozen.hf } : undefined;
      const lmFiles = lmSource?.files;
      if (!lmFiles) {
        throw new UsageError(`--checkpoint ${s.checkpoint}: a stage-2 checkpoint needs its frozen language model: give --language-model FILE (the model.languageModel of its job, e.g. written by \`blip2 pretrain-lm\`)`);
      }
      const embed = lmFiles.map((f) => safetensorsHeader(f).get(OPT_EMBED_TOKENS)).find((x) => x);
      if (!embed) throw new UsageError(`--language-model ${lmFiles.join(', ')}: holds no ${OPT_EMBED_TOKENS}`);
      if (!existsSync(s.lmTokenizer)) throw new UsageError(`LM tokenizer ${s.lmTokenizer}: not found (the OPT tokenizer.json; give --data DIR with opt-tokenizer/ inside)`);
      const lmTokenizer = CaptionTokenizer.fromFile(s.lmTokenizer, { kind: 'opt', maxLength: config.lavis_config.max_txt_len });
      config.text_config.vocab_size = embed.shape[0]!;
      if (lmTokenizer.vocabSize > config.text_config.vocab_size) {
        throw new UsageError(`LM tokenizer ${s.lmTokenizer}: ${lmTokenizer.vocabSize} ids, more than the language model's vocabulary of ${config.text_config.vocab_size}`);
      }
      // "\n" ends a caption (LAVIS: the first id of the tokenizer's "\n").
      const newline = lmTokenizer.newlineTokenId;
      if (newline === undefined) throw new UsageError(`LM tokenizer ${s.lmTokenizer}: has no token for "\\n"`);
      lm = { files: lmFiles, hf: Boolean(lmSource?.hf), tokenizer: lmTokenizer, newline };
    }
    // Every group read from the checkpoint, matched from the headers before any tensor is read (the LM by its load).
    matchCheckpoint(source.files, config, ck ? trainableGroups(stage) : ['vision', ...trainableGroups(stage)]);
    const language = lm && { model: OptLanguageModel.load(lm.files, config, { fp16: lm.hf }), tokenizer: lm.tokenizer, newline: lm.newline };

    await initEngine();
    const params = loadParams(source.files, config, { stage });
    // Stage 2 trains the queries and the projection only; retrieval needs the text side and heads of stage 1.
    const textSide = paramManifest(config).filter((p) => p.group === 'qformer_text').map((p) => p.name);
    const heads = stage === 1 || textSide.every((n) => held.has(n));
    if (stage === 2 && heads) for (const [k, v] of loadParams(source.files, config, { groups: ['qformer_text'] })) params.set(k, v);
    // The frozen ViT: the one the checkpoint was trained against (read from the files its job read it from, or
    // regenerated from its seed), or from the weights.
    let vision: VisionBackbone;
    if (ck?.frozenFrom) vision = VisionBackbone.load(ck.frozenFrom.files, config, { fp16: ck.frozenFrom.hf });
    else if (ck) {
      const vp = createParams(config, ck.frozenSeed, { groups: ['vision'] });
      vision = await VisionBackbone.fromParams(vp, config, { fp16: true });
      disposeParams(vp);
    } else vision = VisionBackbone.load(source.files, config, { fp16: Boolean(source.hf) });
    const step = ck ? readCheckpointMeta(ck.dir).step : undefined;
    return new InferenceModel(stage, config, ck?.dir ?? source.hf?.dir ?? source.files.join(', '), params, vision, tokenizer, language, heads, ck?.dir, step);
  }

  /**
   * The most tokens generation may produce after a prompt of `promptTokens` (BOS included): stage 2, the OPT's
   * positions left after the queries and the prompt; stage 1, the Q-Former's text positions ([DEC] counted, as in
   * `maxLength`). Longer requests are cut to it.
   */
  lengthLimit(promptTokens = 1): number {
    if (this.stage === 2) return this.config.text_config.max_position_embeddings - this.config.num_query_tokens - promptTokens;
    return this.config.qformer_config.max_position_embeddings;
  }

  /** Tokens of a stage-2 prompt (BOS first); 0 for stage 1. */
  promptLength(prompt: string): number {
    return this.lm ? this.lm.tokenizer.encodePrompt(prompt).length : 0;
  }

  /** One caption per image, in order; `batch` images at a time. */
  caption(images: readonly Float32Array[], o: CaptionOptions, batch = 8): string[] {
    if (this.stage === 1 && o.prompt) throw new UsageError('--prompt needs a stage-2 checkpoint (the stage-1 ITG head captions from [DEC] alone)');
    return this.generate(images, () => o.prompt ?? '', o, batch);
  }

  /** Zero-shot VQA (stage 2): one short answer per (image, question). */
  ask(images: readonly Float32Array[], questions: readonly string[], o: { beams?: number; maxNewTokens?: number } = {}): string[] {
    if (this.stage !== 2) throw new UsageError('answering questions needs a stage-2 checkpoint (the OPT decoder); this is a stage-1 checkpoint');
    // LAVIS predict_answers truncates the prompt to max_txt_len tokens (BOS included).
    return this.generate(images, (i) => VQA_PROMPT.replace('{}', questions[i]!), {
      ...VQA_SEARCH, beams: o.beams ?? VQA_SEARCH.beams, maxLength: o.maxNewTokens ?? VQA_SEARCH.maxLength,
    }, 8, this.config.lavis_config.max_txt_len);
  }

  private generate(images: readonly Float32Array[], promptOf: (i: number) => string, o: CaptionOptions, batch: number, promptLimit = Infinity): string[] {
    const encode = (text: string) => this.lm!.tokenizer.encodePrompt(text).slice(0, promptLimit);
    const S = this.imageSize;
    const out: string[] = [];
    for (let start = 0; start < images.length; start += batch) {
      const rows = images.slice(start, start + batch);
      const prompts = this.lm ? rows.map((_, i) => encode(promptOf(start + i))) : [];
      const width = this.lm ? Math.max(...prompts.map((p) => p.length)) : 1;
      const maxLength = Math.min(o.maxLength, this.lengthLimit(width));
      if (maxLength < 1) throw new UsageError(`the prompt takes ${width} tokens: no position of the model's ${this.config.text_config.max_position_embeddings} is left to generate`);
      o = { ...o, maxLength, minLength: Math.min(o.minLength, maxLength) };
      const pixels = new Float32Array(rows.length * 3 * S * S);
      rows.forEach((p, i) => pixels.set(p, i * 3 * S * S));
      const input = tf.tensor4d(pixels, [rows.length, 3, S, S]);
      const hidden = this.vision.encode(input);
      input.dispose();
      try {
        if (this.lm) {
          const search: SearchOptions = {
            beams: o.beams, maxLength: o.maxLength, minLength: o.minLength, eosTokenId: this.lm.newline,
            repetitionPenalty: o.repetitionPenalty ?? 1, lengthPenalty: o.lengthPenalty ?? 1,
          };
          const g = generateWithOpt(this.params, this.lm.model, this.config, hidden, search, leftPaddedPrompt(prompts, this.lm.tokenizer.padTokenId));
          out.push(...g.map((r) => this.lm!.tokenizer.decode(r.tokens).trim()));
        } else {
          const search: SearchOptions = {
            beams: o.beams, maxLength: o.maxLength, minLength: o.minLength, eosTokenId: this.config.lavis_config.sep_token_id,
            repetitionPenalty: o.repetitionPenalty ?? 1, lengthPenalty: o.lengthPenalty ?? 1,
          };
          const g = generateWithItg(this.params, this.config, hidden, search);
          out.push(...g.map((r) => this.qformerTokenizer!.decode(r.tokens).trim()));
        }
      } finally {
        hidden.dispose();
      }
    }
    return out;
  }

  /**
   * Retrieval scores as LAVIS `compute_sim_matrix` makes them (spec §13): image features of the query pass, text
   * features of the text pass (texts cleaned by `pre_caption`, tokenised to `max_txt_len`), ITC similarity
   * sim[i][t] = max over queries of image_feat[i,q] · text_feat[t] (no temperature); then for each image its top `k`
   * texts, and for each text its top `k` images, re-scored as ITM + ITC (every other entry −100).
   * `progress(done, total)` counts the (image, text) pairs scored with ITM.
   */
  async retrievalScores(images: readonly Float32Array[], texts: readonly string[], k: number, progress?: (done: number, total: number) => void) {
    if (!this.canRetrieve) throw new UsageError('retrieval needs the Q-Former\'s ITC and ITM heads: a stage-1 checkpoint (a stage-2 checkpoint holds the queries and the projection only)');
    const tokenizer = this.qformerTokenizer;
    if (!tokenizer) throw new UsageError('retrieval needs the Q-Former\'s tokenizer: give --data DIR (its tokenizer.json) or the job\'s config');
    const p = this.params;
    const c = this.config;
    const S = this.imageSize;
    const batch = 16;
    // 1. ln_vision(ViT(image)) of every image, their image features, and the projected cross-attention keys/values.
    const embeds: tf.Tensor3D[] = [];
    const feats: tf.Tensor3D[] = [];
    for (let start = 0; start < images.length; start += batch) {
      const rows = images.slice(start, start + batch);
      const pixels = new Float32Array(rows.length * 3 * S * S);
      rows.forEach((px, i) => pixels.set(px, i * 3 * S * S));
      const input = tf.tensor4d(pixels, [rows.length, 3, S, S]);
      const hidden = this.vision.encode(input);
      input.dispose();
      const e = lnVision(p, c, hidden); // [b,P,Dv]
      hidden.dispose();
      embeds.push(e);
      feats.push(imageItcFeatures(p, c, e)); // [b,Q,E]
      await yieldToEventLoop();
    }
    const pool = tf.concat(embeds, 0) as tf.Tensor3D; // [N,P,Dv]
    embeds.forEach((t) => t.dispose());
    // tf.tidy keeps tensors of a plain object, not of a Map.
    const kept = tf.tidy(() => {
      const o: Record<string, tf.Tensor> = {};
      for (const [layer, kv] of projectImage(p, c, pool)) Object.assign(o, { [`k${layer}`]: kv.k, [`v${layer}`]: kv.v });
      return o;
    });
    pool.dispose();
    const cross = new Map(Object.keys(kept).filter((n) => n.startsWith('k')).map((n) => [Number(n.slice(1)), { k: kept[n] as tf.Tensor4D, v: kept[`v${n.slice(1)}`] as tf.Tensor4D }]));
    // 2. Text features.
    const tok = tokenizer.encodeBatch(texts.map((t) => preCaption(t)));
    const T = tok.seqLength;
    const idsOf = (rows: readonly number[]) => {
      const out = new Int32Array(rows.length * T);
      rows.forEach((r, i) => out.set(tok.inputIds.subarray(r * T, (r + 1) * T), i * T));
      return tf.tensor2d(out, [rows.length, T], 'int32');
    };
    const maskOf = (rows: readonly number[]) => rows.map((r) => Array.from(tok.attentionMask.subarray(r * T, (r + 1) * T)));
    const textFeats: tf.Tensor2D[] = [];
    for (let start = 0; start < texts.length; start += 64) {
      const rows = Array.from({ length: Math.min(64, texts.length - start) }, (_, i) => start + i);
      const ids = idsOf(rows);
      textFeats.push(textItcFeatures(p, c, ids, maskOf(rows)));
      ids.dispose();
    }
    // 3. sim[i][t] = max_q image_feat[i,q] · text_feat[t]: [N,M].
    const sim = tf.tidy(() => {
      const img = tf.concat(feats, 0) as tf.Tensor3D; // [N,Q,E]
      const txt = tf.concat(textFeats, 0) as tf.Tensor2D; // [M,E]
      const [n, q, e] = img.shape;
      return tf.max(tf.reshape(tf.matMul(tf.reshape(img, [n * q, e]), txt, false, true), [n, q, txt.shape[0]]), 1) as tf.Tensor2D; // [N,M]
    });
    feats.forEach((t) => t.dispose());
    textFeats.forEach((t) => t.dispose());
    const flat = sim.dataSync();
    sim.dispose();
    const M = texts.length;
    const simI2t = Array.from({ length: images.length }, (_, i) => flat.slice(i * M, (i + 1) * M));
    // 4. The top k re-scored as ITM + ITC. The pairs both directions need are scored once each, in large batches
    // (a pair in an image's top k is often in its text's top k too), then looked up by `rerankTopK`.
    const N = images.length;
    const needed = new Set<number>();
    for (let i = 0; i < N; i++) for (const t of topK(simI2t[i]!, k)) needed.add(i * M + t);
    for (let t = 0; t < M; t++) for (const i of topK(Float32Array.from({ length: N }, (_, r) => simI2t[r]![t]!), k)) needed.add(i * M + t);
    const pairs = [...needed].sort((a, b) => a - b);
    const itm = new Map<number, number>();
    const pairBatch = 256;
    try {
      for (let start = 0; start < pairs.length; start += pairBatch) {
        const chunk = pairs.slice(start, start + pairBatch);
        const textRows = chunk.map((x) => x % M);
        const ids = idsOf(textRows);
        const s = itmScores(p, c, cross, chunk.map((x) => Math.floor(x / M)), { inputIds: ids, attentionMask: maskOf(textRows) });
        ids.dispose();
        const out = s.dataSync();
        s.dispose();
        chunk.forEach((x, j) => itm.set(x, out[j]!));
        progress?.(Math.min(pairs.length, start + pairBatch), pairs.length);
        await yieldToEventLoop();
      }
      const scores = await rerankTopK(simI2t, k, (ps) => ps.map(([i, t]) => itm.get(i * M + t)!));
      return { simI2t, ...scores, itmPairs: pairs.length };
    } finally {
      Object.values(kept).forEach((t) => t.dispose());
    }
  }

  dispose(): void {
    disposeParams(this.params);
  }
}
