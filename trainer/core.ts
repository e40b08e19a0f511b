/**
 * Building a trainer's long-lived parts from settings: the model configuration reconciled with the caption
 * tokenizer, the frozen ViT, the trainable parameters' runtime, AdamW and the learning-rate schedule.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createLogger, UsageError, type Logger } from '../common';
import { CaptionTokenizer } from '../dataloader';
import { META_FILE, MODEL_FILE, readCheckpoint } from './checkpoint';
import type { TrainerCore, VisionEncoder } from './loop';
import type { TrainerMetrics } from './metrics';
import {
  createParams, loadModelConfig, disposeParams, loadParams, presetConfig, VisionBackbone, type Blip2Config,
} from './model';
import { tf } from './engine';
import { AdamW, linearWarmupCosineLr } from './optim';
import { Stage1Runtime } from './stage1-runtime';

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
  /** Model preset of trainer/model (`tiny`, `small`, `base`). */
  preset: string;
  /** A config.json overriding the preset ('' = none). */
  modelConfigFile?: string;
  /** Weights to start from: a safetensors file or a folder of them ('' = fresh initialisation from `seed`). */
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
  metrics?: TrainerMetrics;
  log?: Logger;
}

export interface BuiltTrainerCore extends TrainerCore {
  config: Blip2Config;
  tokenizer: CaptionTokenizer;
  configHash: string;
  dispose(): void;
}

/** Weights to start from: a file, a folder of safetensors, or a trainer checkpoint (verified; its trainable part). */
function weightFiles(path: string): { files: string[]; trainerCheckpoint: boolean } {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new UsageError(`model.checkpoint ${path}: ${(e as Error).message}`);
  }
  if (!st.isDirectory()) return { files: [path], trainerCheckpoint: false };
  if (existsSync(join(path, META_FILE))) {
    try {
      readCheckpoint(path); // every checksum, before anything is used
    } catch (e) {
      throw new UsageError(`model.checkpoint ${path}: ${(e as Error).message}`);
    }
    return { files: [join(path, MODEL_FILE)], trainerCheckpoint: true };
  }
  const files = readdirSync(path).filter((f) => f.endsWith('.safetensors')).map((f) => join(path, f));
  if (!files.length) throw new UsageError(`model.checkpoint ${path}: the folder holds no .safetensors file`);
  return { files, trainerCheckpoint: false };
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
  const base = o.modelConfigFile ? loadModelConfig(o.modelConfigFile) : presetConfig(o.preset);
  const tokenizer = CaptionTokenizer.fromFile(o.tokenizerPath, { maxLength: base.lavis_config.max_txt_len });
  const config = modelConfigFor(o.preset, o.modelConfigFile, tokenizer);
  const weights = o.weights ? weightFiles(o.weights) : undefined;
  const files = weights?.files;

  // The frozen ViT: from the weights file(s), or (fresh start, or a trainer checkpoint, which holds only the
  // trainable parameters) generated from the seed, as the run that wrote the checkpoint did.
  let vision: VisionBackbone;
  if (files && !weights.trainerCheckpoint) vision = VisionBackbone.load(files, config);
  else {
    const vp = createParams(config, o.seed, { groups: ['vision'] });
    vision = await VisionBackbone.fromParams(vp, config, { fp16: true });
    disposeParams(vp);
  }
  const initial = () => (files ? loadParams(files, config, { stage: 1 }) : createParams(config, o.seed, { stage: 1 }));
  const runtime = new Stage1Runtime(config, initial());
  const optimizer = new AdamW(runtime.trainable, {
    beta1: o.optim.beta1, beta2: o.optim.beta2, eps: o.optim.eps, weightDecay: o.optim.weightDecay, maxGradNorm: o.optim.gradClipNorm,
  });
  const configHash = createHash('sha256').update(JSON.stringify({ config, stage: 1, weights: o.weights ?? '' })).digest('hex').slice(0, 16);
  const size = config.vision_config.image_size;
  const encoder: VisionEncoder = {
    encode(pixels, batch) {
      return tf.tidy(() => vision.encode(tf.tensor4d(pixels, [batch, 3, size, size])).dataSync() as Float32Array);
    },
  };
  log.info('model ready', { preset: o.preset, trainable: runtime.trainable.reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0), visionResidentBytes: vision.residentBytes, configHash });
  return {
    config, tokenizer, configHash, runtime, vision: encoder, optimizer, metrics: o.metrics, log,
    initialValues() {
      const p = initial();
      const out = new Map(runtime.trainable.map((s) => [s.name, Float32Array.from(p.get(s.name)!.dataSync() as Float32Array)]));
      disposeParams(p);
      return out;
    },
    options: {
      checkpointEvery: o.checkpointEvery, maxSteps: o.maxSteps, seed: o.seed, checkpointRoot: o.checkpointRoot, configHash,
      learningRate: learningRateSchedule(o.optim, o.epochs), ledgerPath: o.ledgerPath, keepCheckpoints: o.keepCheckpoints,
    },
    dispose() {
      runtime.dispose();
    },
  };
}
