/**
 * Building a trainer's long-lived parts from settings: the model configuration reconciled with the caption
 * tokenizer, the frozen ViT (and in stage 2 the frozen OPT and its tokenizer), the stage's model (`Stage1Runtime` or
 * `Stage2Runtime`), AdamW and the learning-rate schedule.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createLogger, safetensorsHeader, safetensorsNames, UsageError, type Logger } from '../common';
import { CaptionTokenizer } from '../dataloader';
import { META_FILE, MODEL_FILE, readCheckpoint } from './checkpoint';
import type { LoopEvaluation, TrainerCore, VisionEncoder } from './loop';
import type { TrainerMetrics } from './metrics';
import {
  createParams, loadModelConfig, disposeParams, loadParams, OPT_POSITION_OFFSET, OptLanguageModel, presetConfig, VisionBackbone,
  type Blip2Config, type Params,
} from './model';
import { tf } from './engine';
import { AdamW, linearWarmupCosineLr } from './optim';
import type { StageModel } from './stage-model';
import { Stage1Runtime } from './stage1-runtime';
import { Stage2Runtime } from './stage2-runtime';

export interface OptimSettings {
  lr: number;
  minLr: number;
  warmupLr: number;
  warmupSteps: number;
  /** `cosine`: LAVIS linear_warmup_cosine_lr; `constant`: the same warm-up, then the peak. */
  schedule: 'cosine' | 'constant';
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** 0 = no clipping. */
  gradClipNorm: number;
}

export interface TrainerCoreOptions {
  /** Pre-training stage: 1 (ITC, ITM, ITG) or 2 (the LM loss through the frozen language model). Default 1. */
  stage?: 1 | 2;
  /** Stage 2: the language model's tokenizer.json (GPT-2 byte-level BPE). */
  lmTokenizerPath?: string;
  /** Stage 2: safetensors file(s) of the frozen LM ('' = from `weights` when they hold it, else random). */
  languageModel?: string;
  /** Model preset of trainer/model (`tiny`, `small`, `base`). */
  preset: string;
  /** A config.json overriding the preset ('' = none). */
  modelConfigFile?: string;
  /**
   * Weights to start from: safetensors file(s), a trainer checkpoint or a job's run directory (`resolveWeights`);
   * '' = fresh initialisation from `seed`.
   */
  weights?: string;
  /** The caption tokenizer (tokenizer.json); the Q-Former's vocabulary and special ids follow it. */
  tokenizerPath: string;
  seed: number;
  epochs: number;
  optim: OptimSettings;
  checkpointEvery: number;
  maxSteps: number;
  checkpointRoot: string;
  /** Checkpoints to keep on disk (0 = all). */
  keepCheckpoints?: number;
  ledgerPath?: string;
  /** In-job evaluation of committed checkpoints (rank 0); undefined = none. */
  evaluation?: LoopEvaluation;
  metrics?: TrainerMetrics;
  log?: Logger;
}

export interface BuiltTrainerCore extends TrainerCore {
  config: Blip2Config;
  tokenizer: CaptionTokenizer;
  configHash: string;
  dispose(): void;
}

/** Where the starting weights come from. */
interface WeightsSource {
  files: string[];
  /** A trainer checkpoint (only trainable parameters): its stage and the seed its frozen backbones came from. */
  checkpoint: { dir: string; stage: number; frozenSeed: number } | null;
}

/**
 * Weights to start from: a safetensors file, a folder of them, a trainer checkpoint (every checksum verified first),
 * or the run directory of a job (its `summary.json` names its last committed checkpoint).
 */
export function resolveWeights(path: string): WeightsSource {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new UsageError(`model.checkpoint ${path}: ${(e as Error).message}`);
  }
  if (!st.isDirectory()) return { files: [path], checkpoint: null };
  if (!existsSync(join(path, META_FILE)) && existsSync(join(path, 'summary.json'))) {
    let summary: { checkpointDir?: unknown; status?: unknown };
    try {
      summary = JSON.parse(readFileSync(join(path, 'summary.json'), 'utf8')) as typeof summary;
    } catch (e) {
      throw new UsageError(`model.checkpoint ${path}: summary.json is not valid JSON (${(e as Error).message})`);
    }
    if (typeof summary.checkpointDir !== 'string') throw new UsageError(`model.checkpoint ${path}: the job of this run directory committed no checkpoint (status ${String(summary.status)})`);
    return resolveWeights(summary.checkpointDir);
  }
  if (existsSync(join(path, META_FILE))) {
    let meta;
    try {
      meta = readCheckpoint(path).meta; // every checksum, before anything is used
    } catch (e) {
      throw new UsageError(`model.checkpoint ${path}: ${(e as Error).message}`);
    }
    const stage = typeof meta.extra.stage === 'number' ? meta.extra.stage : 1;
    const seed = meta.rng.frozenSeed ?? meta.rng.seed;
    if (typeof seed !== 'number') throw new UsageError(`model.checkpoint ${path}: ${META_FILE} records no seed of its frozen backbones`);
    return { files: [join(path, MODEL_FILE)], checkpoint: { dir: path, stage, frozenSeed: seed } };
  }
  const files = readdirSync(path).filter((f) => f.endsWith('.safetensors')).map((f) => join(path, f));
  if (!files.length) throw new UsageError(`model.checkpoint ${path}: the folder holds no .safetensors file`);
  return { files, checkpoint: null };
}

const OPT_EMBED_TOKENS = 'language_model.model.decoder.embed_tokens.weight';

/** Names of every tensor in the files (headers only). */
function tensorNames(files: string[]): Set<string> {
  return new Set(files.flatMap((f) => safetensorsNames(f)));
}

/** The preset (or config file) with the Q-Former's vocabulary and special token ids taken from the tokenizer. */
export function modelConfigFor(preset: string, modelConfigFile: string | undefined, tokenizer: CaptionTokenizer): Blip2Config {
  const config = modelConfigFile ? loadModelConfig(modelConfigFile) : presetConfig(preset);
  if (tokenizer.kind !== 'bert' || tokenizer.sepTokenId === undefined || tokenizer.decTokenId === undefined) {
    throw new UsageError(`tokenizer: the Q-Former needs a BERT-style tokenizer ([CLS], [SEP], [DEC]); got kind ${tokenizer.kind}`);
  }
  const q = config.qformer_config;
  q.vocab_size = tokenizer.vocabSize;
  q.pad_token_id = tokenizer.padTokenId;
  config.lavis_config.cls_token_id = tokenizer.bosTokenId;
  config.lavis_config.sep_token_id = tokenizer.sepTokenId;
  config.lavis_config.dec_token_id = tokenizer.decTokenId;
  if (config.lavis_config.max_txt_len > q.max_position_embeddings) {
    throw new UsageError(`model: max_txt_len ${config.lavis_config.max_txt_len} exceeds max_position_embeddings ${q.max_position_embeddings}`);
  }
  return config;
}

export function learningRateSchedule(o: OptimSettings, epochs: number): (epoch: number, stepInEpoch: number) => number {
  const s = { initLr: o.lr, minLr: o.minLr, warmupLr: o.warmupLr, warmupSteps: o.warmupSteps, maxEpoch: epochs };
  if (o.schedule === 'constant') return (epoch, step) => linearWarmupCosineLr(s, 0, epoch === 0 ? step : Number.MAX_SAFE_INTEGER);
  return (epoch, step) => linearWarmupCosineLr(s, epoch, step);
}

export async function createTrainerCore(o: TrainerCoreOptions): Promise<BuiltTrainerCore> {
  const log = o.log ?? createLogger('trainer');
  const stage = o.stage ?? 1;
  const base = o.modelConfigFile ? loadModelConfig(o.modelConfigFile) : presetConfig(o.preset);
  const tokenizer = CaptionTokenizer.fromFile(o.tokenizerPath, { maxLength: base.lavis_config.max_txt_len });
  const config = modelConfigFor(o.preset, o.modelConfigFile, tokenizer);
  const source = o.weights ? resolveWeights(o.weights) : undefined;
  const files = source?.files;
  const fromCheckpoint = source?.checkpoint ?? null;
  // Frozen backbones not given by a weights file are generated from this seed: a trainer checkpoint's own (so that
  // a job started from it sees the ViT it was trained against), else train.seed.
  const frozenSeed = fromCheckpoint?.frozenSeed ?? o.seed;
  if (fromCheckpoint && fromCheckpoint.stage > stage) {
    throw new UsageError(`model.checkpoint ${fromCheckpoint.dir}: a stage-${fromCheckpoint.stage} checkpoint cannot start a stage-${stage} job (it holds no stage-1 heads)`);
  }
  const held = files ? tensorNames(files) : new Set<string>();

  // The frozen ViT: from the weights file(s), or generated.
  let vision: VisionBackbone;
  if (files && !fromCheckpoint) vision = VisionBackbone.load(files, config);
  else {
    const vp = createParams(config, frozenSeed, { groups: ['vision'] });
    vision = await VisionBackbone.fromParams(vp, config, { fp16: true });
    disposeParams(vp);
  }

  let model: StageModel;
  let initial: () => Params;
  if (stage === 1) {
    initial = () => (files ? loadParams(files, config, { stage: 1 }) : createParams(config, o.seed, { stage: 1 }));
    model = new Stage1Runtime(config, initial());
  } else {
    const lmTokenizer = stage2Tokenizer(o.lmTokenizerPath, config);
    // The frozen LM: from model.languageModel, or from the weights file(s) when they hold it (its vocabulary size
    // taken from the file), else random (its vocabulary covering the tokenizer's, its special ids the tokenizer's).
    const lmFiles = o.languageModel ? resolveWeights(o.languageModel).files : files && held.has(OPT_EMBED_TOKENS) ? files : undefined;
    const t = config.text_config;
    let lm: OptLanguageModel;
    if (lmFiles) {
      const embed = lmFiles.map((f) => safetensorsHeader(f).get(OPT_EMBED_TOKENS)).find((x) => x);
      if (!embed) throw new UsageError(`model.languageModel ${lmFiles.join(', ')}: holds no ${OPT_EMBED_TOKENS}`);
      t.vocab_size = embed.shape[0]!;
      lm = OptLanguageModel.load(lmFiles, config);
    } else {
      if (t.vocab_size < lmTokenizer.vocabSize) t.vocab_size = lmTokenizer.vocabSize;
      t.pad_token_id = lmTokenizer.padTokenId;
      t.bos_token_id = t.eos_token_id = lmTokenizer.bosTokenId;
      log.warn('the frozen language model is randomly initialised (model.languageModel is empty): it knows no language, so the LM loss can hardly fall below ln(vocabulary)', { vocabulary: t.vocab_size });
      lm = OptLanguageModel.random(config, frozenSeed);
    }
    // The trainable part: all of it from the weights when they hold language_projection (a stage-2 checkpoint, a
    // BLIP-2 checkpoint); from a stage-1 checkpoint the query path only (the text-only Q-Former parts and the
    // stage-1 heads are dropped, as LAVIS Blip2OPT does), with language_projection fresh.
    initial = () => {
      if (!files) return createParams(config, o.seed, { stage: 2 });
      if (held.has('language_projection.weight')) return loadParams(files, config, { stage: 2 });
      const p = loadParams(files, config, { groups: ['qformer_query'] });
      for (const [k, v] of createParams(config, o.seed, { groups: ['language_projection'] })) p.set(k, v);
      return p;
    };
    if (files && !held.has('language_projection.weight')) log.info('stage 2 from a stage-1 model: the query path carried over, language_projection initialised', { from: fromCheckpoint?.dir ?? files.join(', ') });
    model = new Stage2Runtime(config, initial(), lm, lmTokenizer);
  }
  const optimizer = new AdamW(model.trainable, {
    beta1: o.optim.beta1, beta2: o.optim.beta2, eps: o.optim.eps, weightDecay: o.optim.weightDecay, maxGradNorm: o.optim.gradClipNorm,
  });
  const configHash = createHash('sha256').update(JSON.stringify({ config, stage, weights: o.weights ?? '' })).digest('hex').slice(0, 16);
  const size = config.vision_config.image_size;
  const encoder: VisionEncoder = {
    encode(pixels, batch) {
      return tf.tidy(() => vision.encode(tf.tensor4d(pixels, [batch, 3, size, size])).dataSync() as Float32Array);
    },
  };
  log.info('model ready', {
    preset: o.preset, stage, trainable: model.trainable.reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0),
    visionResidentBytes: vision.residentBytes, ...(model instanceof Stage2Runtime ? { languageModelResidentBytes: model.lm.weights.residentBytes } : {}), configHash,
  });
  return {
    config, tokenizer, configHash, model, vision: encoder, optimizer, metrics: o.metrics, log,
    initialValues() {
      const p = initial();
      const out = new Map(model.trainable.map((s) => [s.name, Float32Array.from(p.get(s.name)!.dataSync() as Float32Array)]));
      disposeParams(p);
      return out;
    },
    options: {
      checkpointEvery: o.checkpointEvery, maxSteps: o.maxSteps, seed: o.seed, frozenSeed, checkpointRoot: o.checkpointRoot, configHash,
      learningRate: learningRateSchedule(o.optim, o.epochs), ledgerPath: o.ledgerPath, keepCheckpoints: o.keepCheckpoints,
      evaluation: o.evaluation,
    },
    dispose() {
      model.dispose();
    },
  };
}

/** The language model's tokenizer for stage 2, checked against the model's positions before anything starts. */
function stage2Tokenizer(path: string | undefined, config: Blip2Config): CaptionTokenizer {
  if (!path) throw new UsageError('stage 2 needs the language model\'s tokenizer: set data.lmTokenizer');
  if (!existsSync(path)) {
    throw new UsageError(`data.lmTokenizer ${path}: not found (\`blip2 data synth\` writes one for the synthetic data; for real data, the tokenizer.json of the OPT checkpoint)`);
  }
  const tok = CaptionTokenizer.fromFile(path, { kind: 'opt', maxLength: config.lavis_config.max_txt_len });
  const need = config.num_query_tokens + config.lavis_config.max_txt_len + OPT_POSITION_OFFSET;
  if (need > config.text_config.max_position_embeddings) {
    throw new UsageError(`model: ${config.num_query_tokens} queries + max_txt_len ${config.lavis_config.max_txt_len} need ${need} OPT positions, more than max_position_embeddings ${config.text_config.max_position_embeddings}`);
  }
  return tok;
}
