/**
 * The job configuration: one convict schema for every process of a training job (launcher, coordinator,
 * trainers). Sources, later ones winning: schema defaults < a YAML or JSON file < environment variables
 * (`BLIP2_<PATH>`, e.g. `BLIP2_TRAIN_EPOCHS`, or the name a key sets: `BLIP2_ENGINE` for `engine.backend`) <
 * command-line flags (`--train.epochs 3` or `--train.epochs=3`).
 *
 * Validation is strict: an unknown key (in the file or as a flag) or a value that breaks its rule throws a
 * `ConfigError` whose message names the key, the value and the rule. Secrets (`sensitive: true`) are masked in
 * `printJobConfig()`. Nothing else in the repository reads `process.env` for job settings.
 */
import convict from 'convict';
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { UsageError } from './errors';

/** A bad job configuration (file, env var or flag): print the message and exit non-zero. */
export class ConfigError extends UsageError {}

export type LogLevelName = 'debug' | 'info' | 'warn' | 'error';

/** Evaluation tasks (trainer/evaluate.ts): retrieval needs stage 1, vqa stage 2. */
export const EVAL_TASK_NAMES = ['retrieval', 'caption', 'vqa'] as const;
export type EvalTaskName = (typeof EVAL_TASK_NAMES)[number];

export interface JobConfig {
  job: { id: string; token: string; runDir: string };
  node: { id: string };
  model: { preset: string; config: string; checkpoint: string; languageModel: string };
  data: {
    root: string; datasets: string[]; tokenizer: string; lmTokenizer: string; samplesPerShard: number; workers: number; cropMinScale: number; flipProbability: number; ackWaitMs: number;
    synthSamples: number; synthImageSize: number;
  };
  train: { stage: number; batchSizePerTrainer: number; epochs: number; maxSteps: number; seed: number };
  optim: {
    lr: number; minLr: number; warmupLr: number; warmupSteps: number; schedule: 'cosine' | 'constant';
    weightDecay: number; beta1: number; beta2: number; eps: number; gradClipNorm: number;
  };
  checkpoint: { dir: string; intervalSteps: number; keep: number };
  eval: { tasks: EvalTaskName[]; intervalSteps: number; atEnd: boolean; split: string; limit: number };
  nats: { url: string; user: string; password: string; token: string; credsFile: string };
  grpc: { host: string; advertiseHost: string; port: number; tls: { certFile: string; keyFile: string; caFile: string } };
  metrics: { enabled: boolean; host: string; port: number };
  log: { level: LogLevelName; format: 'text' | 'json' };
  world: { min: number; max: number; trainers: number; rendezvousSettleMs: number };
  membership: { heartbeatMs: number; timeoutMs: number };
  launch: { target: 'local' | 'kubernetes'; restarts: number; backoffMs: number; restartsResetMs: number };
  engine: EngineConfig;
}

/**
 * The tensor engine's settings (trainer/engine turns them into its start options). 0 for a thread count: the
 * engine's default.
 */
export interface EngineConfig {
  backend: 'auto' | 'tensorflow' | 'wasm' | 'cpu';
  threads: number;
  matmul: 'auto' | 'openblas' | 'xnnpack';
  matmulThreads: number;
  wasmThreads: number;
}

// --- formats: each coerces strings strictly (so "3.5" is not silently 3) and names its rule on failure -----------

const intPattern = /^[+-]?\d+$/;
const numPattern = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const toInt = (v: unknown) => (typeof v === 'string' && intPattern.test(v.trim()) ? Number(v.trim()) : v);
const toNum = (v: unknown) => (typeof v === 'string' && numPattern.test(v.trim()) ? Number(v.trim()) : v);
const toBool = (v: unknown) => (v === 'true' ? true : v === 'false' ? false : v);

function intFormat(name: string, min: number, max: number, rule: string) {
  return {
    name,
    coerce: toInt,
    validate(v: unknown) {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`must be ${rule}`);
    },
  };
}
function numFormat(name: string, ok: (n: number) => boolean, rule: string) {
  return {
    name,
    coerce: toNum,
    validate(v: unknown) {
      if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new Error(`must be ${rule}`);
    },
  };
}

convict.addFormats({
  'int-positive': intFormat('int-positive', 1, Number.MAX_SAFE_INTEGER, 'an integer >= 1'),
  'int-nonneg': intFormat('int-nonneg', 0, Number.MAX_SAFE_INTEGER, 'an integer >= 0'),
  'tcp-port': intFormat('tcp-port', 0, 65535, 'a TCP port, an integer in [0, 65535] (0 = any free port)'),
  'train-stage': intFormat('train-stage', 1, 2, '1 (representation learning: ITC, ITM, ITG) or 2 (generative learning with the frozen language model)'),
  'engine-threads': intFormat('engine-threads', 0, 8, 'an integer in [0, 8] (0 = the default)'),
  'engine-blas-threads': intFormat('engine-blas-threads', 0, 64, 'an integer in [0, 64] (0 = the default)'),
  'num-positive': numFormat('num-positive', (n) => n > 0, 'a number > 0'),
  'num-nonneg': numFormat('num-nonneg', (n) => n >= 0, 'a number >= 0'),
  'num-unit-open': numFormat('num-unit-open', (n) => n >= 0 && n < 1, 'a number in [0, 1)'),
  'num-unit-closed': numFormat('num-unit-closed', (n) => n >= 0 && n <= 1, 'a number in [0, 1]'),
  'num-unit-positive': numFormat('num-unit-positive', (n) => n > 0 && n <= 1, 'a number in (0, 1]'),
  'strict-boolean': {
    name: 'strict-boolean',
    coerce: toBool,
    validate(v: unknown) {
      if (typeof v !== 'boolean') throw new Error('must be true or false');
    },
  },
  'job-id': {
    name: 'job-id',
    validate(v: unknown) {
      if (typeof v !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(v))
        throw new Error('must be 1-64 characters of A-Z, a-z, 0-9, "_" or "-" (it names NATS subjects and KV buckets)');
    },
  },
  'nats-url': {
    name: 'nats-url',
    validate(v: unknown) {
      if (typeof v !== 'string') throw new Error('must be a string');
      if (v === '') return;
      for (const part of v.split(',')) {
        if (!/^(nats|tls|ws|wss):\/\/[^\s/]+(:\d+)?\/?$/.test(part.trim()))
          throw new Error('must be empty (start a local nats-server) or nats://host:port, comma-separated for a cluster');
      }
    },
  },
  'eval-tasks': {
    name: 'eval-tasks',
    coerce: (v: unknown) => (typeof v === 'string' ? (v.trim() === '' ? [] : v.split(',').map((x) => x.trim())) : v),
    validate(v: unknown) {
      if (!Array.isArray(v)) throw new Error(`must be a list of evaluation tasks (${EVAL_TASK_NAMES.join(', ')}; comma-separated in env and flags)`);
      for (const t of v) if (!(EVAL_TASK_NAMES as readonly unknown[]).includes(t)) throw new Error(`evaluation task ${JSON.stringify(t)} is not one of ${EVAL_TASK_NAMES.join(', ')}`);
      if (new Set(v).size !== v.length) throw new Error('lists a task twice');
    },
  },
  'dataset-names': {
    name: 'dataset-names',
    coerce: (v: unknown) => (typeof v === 'string' ? (v.trim() === '' ? [] : v.split(',').map((x) => x.trim())) : v),
    validate(v: unknown) {
      if (!Array.isArray(v)) throw new Error('must be a list of dataset names of the index (comma-separated in env and flags)');
      const seen = new Set<string>();
      for (const name of v) {
        if (typeof name !== 'string' || !/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`dataset name ${JSON.stringify(name)} must match [A-Za-z0-9._-]+`);
        if (seen.has(name)) throw new Error(`dataset name ${JSON.stringify(name)} is listed twice`);
        seen.add(name);
      }
    },
  },
});

/** Model presets that the model package defines (trainer/model). */
export const MODEL_PRESETS = ['tiny', 'demo', 'small', 'base', 'blip2-opt-2.7b', 'blip2-opt-6.7b'] as const;
export type ModelPresetName = (typeof MODEL_PRESETS)[number];

// Every key: doc, format, default, and optionally env. `arg` is added below (the dotted path); `env` is BLIP2_<PATH>
// unless the key names its own.
const schema = {
  job: {
    id: { doc: 'Job id: names the NATS subjects, KV bucket and stream of this job.', format: 'job-id', default: 'blip2-demo' },
    token: {
      doc: 'Shared secret every trainer presents to the coordinator. Empty: `blip2 launch` generates one for the run.',
      format: String, default: '', sensitive: true,
    },
    runDir: { doc: 'Run directory (metrics JSONL, logs, default checkpoint dir). Empty: runs/<job.id>.', format: String, default: '' },
  },
  node: {
    id: { doc: 'This process\'s node id (set per process by the launcher). Empty: <hostname>-<pid>.', format: String, default: '' },
  },
  model: {
    preset: { doc: 'Model preset of trainer/model.', format: [...MODEL_PRESETS], default: 'tiny' },
    config: { doc: 'Path of a model config.json overriding the preset (a BLIP-2 config.json of Hugging Face, or one `blip2 export` wrote). Empty: the preset, or the config.json of a Hugging Face folder given as model.checkpoint.', format: String, default: '' },
    checkpoint: {
      doc: 'Weights to start from (step 0): a trainer checkpoint directory, the run directory of a finished job (its last commit), a Hugging Face BLIP-2 checkpoint folder (model.safetensors.index.json and its shards, or model.safetensors; its config.json gives the shapes unless model.config is set; its frozen ViT and OPT held as F16), or safetensors file(s) with BLIP-2\'s names. Stage 2 from a stage-1 checkpoint keeps the Q-Former, query_tokens and ln_vision, drops the stage-1 heads and starts language_projection fresh. Empty: fresh initialisation from train.seed.',
      format: String, default: '',
    },
    languageModel: {
      doc: 'Stage 2: safetensors file (or folder of them, or a Hugging Face BLIP-2 checkpoint folder) of the frozen language model with BLIP-2\'s names (language_model.model.decoder.*), e.g. from `blip2 model pretrain-lm`. Empty: from model.checkpoint when it holds one, else randomly initialised (it knows no language, so the LM loss can hardly fall: for tests and benchmarks).',
      format: String, default: '',
    },
  },
  data: {
    root: {
      doc: 'Data folder holding index.json (written by `blip2 data index` or `blip2 data synth`). Empty: the synthetic dataset, generated into <runDir>/data.',
      format: String, default: '',
    },
    datasets: {
      doc: 'Names of the index\'s datasets to train on (comma-separated in env and flags). Empty: every dataset whose split is not val or test.',
      format: 'dataset-names', default: [] as string[],
    },
    tokenizer: { doc: 'tokenizer.json of the captions. Empty: <data.root>/tokenizer.json.', format: String, default: '' },
    lmTokenizer: {
      doc: 'Stage 2: tokenizer.json of the language model (OPT: GPT-2 byte-level BPE). Empty: <data.root>/opt-tokenizer/tokenizer.json (what `blip2 data synth` writes).',
      format: String, default: '',
    },
    samplesPerShard: { doc: 'Most samples in one shard descriptor (larger shards are split into ranges).', format: 'int-positive', default: 16 },
    workers: { doc: 'Image transform worker threads per trainer.', format: 'int-nonneg', default: 1 },
    cropMinScale: {
      doc: 'Training augmentation: RandomResizedCrop takes between this fraction of the image area and all of it (LAVIS: 0.5); 1 = no crop, the whole image resized. A crop can cut out what the caption names: use 1 when captions name every object (the synthetic data).',
      format: 'num-unit-positive', default: 0.5,
    },
    flipProbability: {
      doc: 'Training augmentation: probability of a horizontal flip (LAVIS: 0.5); 0 = never. A flipped image\'s caption has "left" and "right" swapped.',
      format: 'num-unit-closed', default: 0.5,
    },
    ackWaitMs: { doc: 'A shard descriptor held this long without a sign of life is redelivered to another trainer.', format: 'int-positive', default: 60_000 },
    synthSamples: { doc: 'Samples of the synthetic dataset when it is generated (train + val).', format: 'int-positive', default: 128 },
    synthImageSize: { doc: 'Side in pixels of the synthetic images.', format: 'int-positive', default: 32 },
  },
  train: {
    stage: {
      doc: 'Pre-training stage: 1 (ITC+ITM+ITG: the Q-Former learns from the frozen ViT) or 2 (the LM loss through the frozen language model; start it from a stage-1 checkpoint with model.checkpoint).',
      format: 'train-stage', default: 1,
    },
    batchSizePerTrainer: { doc: 'Samples per trainer per step.', format: 'int-positive', default: 4 },
    epochs: { doc: 'Epochs over the datasets.', format: 'int-positive', default: 2 },
    maxSteps: { doc: 'Stop after this many optimiser steps (0 = no limit).', format: 'int-nonneg', default: 0 },
    seed: { doc: 'Seed of initialisation, shuffling and augmentation.', format: 'int-nonneg', default: 42 },
  },
  optim: {
    lr: { doc: 'Peak learning rate (BLIP-2: init_lr 1e-4).', format: 'num-positive', default: 1e-4 },
    minLr: { doc: 'Final learning rate of the cosine schedule (BLIP-2: 1e-5).', format: 'num-nonneg', default: 1e-5 },
    warmupLr: { doc: 'Learning rate at step 0 of the warm-up (BLIP-2: 1e-6).', format: 'num-nonneg', default: 1e-6 },
    warmupSteps: { doc: 'Linear warm-up steps (BLIP-2 stage 1: 5000).', format: 'int-nonneg', default: 5000 },
    schedule: { doc: 'Schedule after warm-up.', format: ['cosine', 'constant'], default: 'cosine' },
    weightDecay: { doc: 'AdamW weight decay on parameters other than 1-D and biases.', format: 'num-nonneg', default: 0.05 },
    beta1: { doc: 'AdamW beta1.', format: 'num-unit-open', default: 0.9 },
    beta2: { doc: 'AdamW beta2 (LAVIS default 0.999).', format: 'num-unit-open', default: 0.999 },
    eps: { doc: 'AdamW epsilon.', format: 'num-positive', default: 1e-8 },
    gradClipNorm: { doc: 'Clip the global gradient norm to this value (0 = no clipping).', format: 'num-nonneg', default: 0 },
  },
  checkpoint: {
    dir: { doc: 'Checkpoint directory. Empty: <runDir>/checkpoints.', format: String, default: '' },
    intervalSteps: { doc: 'Commit a checkpoint every this many steps (and at the end of every epoch).', format: 'int-positive', default: 20 },
    keep: { doc: 'Committed checkpoints to keep on disk.', format: 'int-positive', default: 3 },
  },
  eval: {
    tasks: {
      doc: 'Evaluate the held-out split during the job (rank 0, on the committed checkpoint): retrieval (stage 1), caption, vqa (stage 2). Empty: no evaluation.',
      format: 'eval-tasks', default: [],
    },
    intervalSteps: { doc: 'With eval.tasks: evaluate every this many steps (a commit is made at those steps); 0 = only at the end (eval.atEnd).', format: 'int-nonneg', default: 0 },
    atEnd: { doc: 'With eval.tasks: evaluate the job\'s last commit (at train.maxSteps, or the end of the last epoch).', format: 'strict-boolean', default: true },
    split: { doc: 'The held-out split evaluated (datasets of the index whose split is this).', format: String, default: 'val' },
    limit: { doc: 'Evaluate at most this many images of the split (0 = all): bounds the time each evaluation takes.', format: 'int-nonneg', default: 0 },
  },
  nats: {
    url: { doc: 'NATS server URL(s). Empty: `blip2 launch` starts a local nats-server.', format: 'nats-url', default: '' },
    user: { doc: 'NATS user name (empty: none).', format: String, default: '' },
    password: { doc: 'NATS password.', format: String, default: '', sensitive: true },
    token: { doc: 'NATS auth token.', format: String, default: '', sensitive: true },
    credsFile: { doc: 'NATS credentials file (.creds).', format: String, default: '' },
  },
  grpc: {
    host: { doc: 'Interface the trainer\'s collective gRPC server listens on.', format: String, default: '127.0.0.1' },
    advertiseHost: { doc: 'Host other trainers dial. Empty: grpc.host.', format: String, default: '' },
    port: { doc: 'Port of the collective gRPC server (0 = any free port).', format: 'tcp-port', default: 0 },
    tls: {
      certFile: { doc: 'PEM certificate of this trainer (empty: no TLS).', format: String, default: '' },
      keyFile: { doc: 'PEM private key of this trainer.', format: String, default: '' },
      caFile: { doc: 'PEM CA that signed the peers\' certificates.', format: String, default: '' },
    },
  },
  metrics: {
    enabled: { doc: 'Serve /metrics (Prometheus).', format: 'strict-boolean', default: true },
    host: { doc: 'Interface of the /metrics server.', format: String, default: '127.0.0.1' },
    port: { doc: 'Port of the /metrics server (0 = any free port, logged at start).', format: 'tcp-port', default: 0 },
  },
  log: {
    level: { doc: 'Log level.', format: ['debug', 'info', 'warn', 'error'], default: 'info' },
    format: { doc: 'Log format: readable text or one JSON object a line.', format: ['text', 'json'], default: 'text' },
  },
  world: {
    min: { doc: 'Fewest trainers the job trains with; below it, it waits.', format: 'int-positive', default: 1 },
    max: { doc: 'Most trainers in one generation; more wait as spares.', format: 'int-positive', default: 64 },
    trainers: { doc: 'Trainer processes `blip2 launch` starts.', format: 'int-positive', default: 2 },
    rendezvousSettleMs: { doc: 'Once world.min trainers are present, wait this long for more before forming a generation.', format: 'int-nonneg', default: 1000 },
  },
  membership: {
    heartbeatMs: { doc: 'Trainer heartbeat period.', format: 'int-positive', default: 500 },
    timeoutMs: { doc: 'A trainer silent this long is declared lost.', format: 'int-positive', default: 5000 },
  },
  launch: {
    target: { doc: 'Where the job runs: local (`blip2 launch` runs every process on this machine). kubernetes is chosen on the command line, `blip2 launch --target kubernetes --render-dir DIR` (it writes the manifests); a local launch of a job file that says kubernetes is refused.', format: ['local', 'kubernetes'], default: 'local' },
    restarts: {
      doc: 'How many times `blip2 launch` restarts each of its processes (a trainer, the coordinator, its nats-server) that dies before the job ends; 0: never.',
      format: 'int-nonneg', default: 5,
    },
    backoffMs: {
      doc: 'Wait before `blip2 launch` restarts a process that died: this, doubled at each further restart of the same process (at most 30 s).',
      format: 'int-positive', default: 1000,
    },
    restartsResetMs: {
      doc: 'A process that has run this long since it was last started, then dies, counts as a first failure again: its restart count and backoff start from 0 (launch.restarts limits restarts in a row, not over the whole job); 0: never reset.',
      format: 'int-nonneg', default: 600_000,
    },
  },
  engine: {
    backend: {
      doc: 'Tensor engine: auto (tfjs-node-gpu when it loads, else wasm, else cpu), tensorflow, wasm or cpu.',
      format: ['auto', 'tensorflow', 'wasm', 'cpu'], default: 'auto', env: 'BLIP2_ENGINE',
    },
    threads: {
      doc: 'Threads of the wasm engine, 1-8; 0: one per CPU core the process may use, at most 8 (`blip2 launch` gives each trainer cores / trainers).',
      format: 'engine-threads', default: 0,
    },
    matmul: {
      doc: 'Matmul of the wasm engine: openblas (the native addon; an error when it is not built), xnnpack (wasm), or auto (openblas when the addon loads).',
      format: ['auto', 'openblas', 'xnnpack'], default: 'auto',
    },
    matmulThreads: { doc: 'Threads of the OpenBLAS matmul and the fused kernels, 1-64; 0: engine.threads.', format: 'engine-blas-threads', default: 0 },
    wasmThreads: {
      doc: 'Threads of the wasm backend\'s own pool, 1-8; 0: 1 when the native addon runs the heavy kernels, else engine.threads.',
      format: 'engine-threads', default: 0,
    },
  },
};

type SchemaNode = Record<string, unknown>;
const isLeaf = (n: SchemaNode) => 'default' in n && 'doc' in n;

/** Dotted paths of every key of the schema, e.g. `train.epochs`. */
export function configKeys(node: SchemaNode = schema, prefix = ''): string[] {
  return Object.entries(node).flatMap(([k, v]) => {
    const path = prefix ? `${prefix}.${k}` : k;
    return isLeaf(v as SchemaNode) ? [path] : configKeys(v as SchemaNode, path);
  });
}

/** `train.batchSizePerTrainer` -> `BLIP2_TRAIN_BATCH_SIZE_PER_TRAINER`. */
export function envNameOf(path: string): string {
  return 'BLIP2_' + path.split('.').map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

const leafOf = (path: string) => path.split('.').reduce<SchemaNode>((n, p) => n[p] as SchemaNode, schema);

/** The environment variable of a key: the one the key names (`engine.backend`: BLIP2_ENGINE), else `envNameOf`. */
export function envOf(path: string): string {
  return (leafOf(path) as { env?: string }).env ?? envNameOf(path);
}

function withEnvAndArgs(node: SchemaNode, prefix = ''): SchemaNode {
  const out: SchemaNode = {};
  for (const [k, v] of Object.entries(node)) {
    const path = prefix ? `${prefix}.${k}` : k;
    out[k] = isLeaf(v as SchemaNode) ? { ...(v as SchemaNode), env: envOf(path) } : withEnvAndArgs(v as SchemaNode, path);
  }
  return out;
}
const fullSchema = withEnvAndArgs(schema);

export interface LoadJobConfigOptions {
  /** YAML (.yaml/.yml) or JSON file. Default: none (schema defaults). */
  file?: string;
  /** Environment. Default: process.env. */
  env?: NodeJS.ProcessEnv;
  /** Flags, e.g. ['--train.epochs', '3']. Default: none. */
  argv?: string[];
  /** Values applied after the file and before env/flags (used by the launcher for generated values). */
  overrides?: Record<string, unknown>;
}

export interface LoadedJobConfig {
  config: JobConfig;
  /** The resolved configuration as JSON with secrets masked. */
  print(): string;
  /** The file it was loaded from (absolute), if any. */
  file?: string;
}

function parseFlags(argv: string[], keys: Set<string>): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new ConfigError(`config flag "${a}": expected --<key> <value> or --<key>=<value>`);
    const eq = a.indexOf('=');
    const key = a.slice(2, eq < 0 ? undefined : eq);
    if (!keys.has(key)) throw new ConfigError(`config flag "--${key}": unknown key (see \`blip2 config --keys\`)`);
    if (eq >= 0) out.set(key, a.slice(eq + 1));
    else {
      if (i + 1 >= argv.length) throw new ConfigError(`config flag "--${key}": missing value`);
      out.set(key, argv[++i]!);
    }
  }
  return out;
}

function readConfigFile(file: string): Record<string, unknown> {
  if (!existsSync(file)) throw new ConfigError(`config file ${file}: not found`);
  const text = readFileSync(file, 'utf8');
  let parsed: unknown;
  try {
    parsed = /\.json$/i.test(file) ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw new ConfigError(`config file ${file}: not valid ${/\.json$/i.test(file) ? 'JSON' : 'YAML'}: ${(e as Error).message}`);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError(`config file ${file}: the top level must be a mapping of keys`);
  return parsed as Record<string, unknown>;
}

/** Unknown keys of a file, reported with their dotted path (convict's own check cannot see inside leaf objects). */
function unknownFileKeys(obj: Record<string, unknown>, node: SchemaNode = schema, prefix = ''): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(obj)) {
    const path = prefix ? `${prefix}.${k}` : k;
    const s = node[k] as SchemaNode | undefined;
    if (!s) out.push(path);
    else if (!isLeaf(s)) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) out.push(`${path} (a section: expected a mapping, got ${JSON.stringify(v)})`);
      else out.push(...unknownFileKeys(v as Record<string, unknown>, s, path));
    }
  }
  return out;
}

/**
 * Loads, validates and resolves the job configuration. Throws ConfigError naming the key, the value and the rule.
 * Derived defaults: runDir = runs/<job.id>, checkpoint.dir = <runDir>/checkpoints, node.id = <hostname>-<pid>,
 * grpc.advertiseHost = grpc.host; relative paths in a file are resolved against the file's directory.
 */
export function loadJobConfig(o: LoadJobConfigOptions = {}): LoadedJobConfig {
  const env = o.env ?? process.env;
  const argv = o.argv ?? [];
  const keys = new Set(configKeys());
  const flags = parseFlags(argv, keys);
  let conf: convict.Config<JobConfig>;
  try {
    conf = convict<JobConfig>(fullSchema as unknown as convict.Schema<JobConfig>, { env, args: [] });
  } catch (e) {
    throw new ConfigError(`config from environment or flags: ${(e as Error).message}`);
  }
  const where = o.file ? `config file ${o.file}` : 'config';
  const file = o.file ? resolve(o.file) : undefined;
  if (file) {
    const obj = readConfigFile(file);
    const unknown = unknownFileKeys(obj);
    if (unknown.length) throw new ConfigError(`${where}: unknown key(s): ${unknown.join(', ')}`);
    try {
      conf.load(obj as Partial<JobConfig>);
    } catch (e) {
      throw new ConfigError(`${where}: ${(e as Error).message}`);
    }
  }
  if (o.overrides) {
    for (const [k, v] of Object.entries(o.overrides)) {
      if (!keys.has(k)) throw new ConfigError(`config override "${k}": unknown key`);
      if (env[envOf(k)] === undefined && !flags.has(k)) conf.set(k as never, v as never);
    }
  }
  for (const [k, v] of flags) conf.set(k as never, v as never);
  try {
    conf.validate({ allowed: 'strict' });
  } catch (e) {
    const lines = (e as Error).message.split('\n').map((l) => {
      l = l.replace(/^configuration param '([^']+)'/, 'key "$1"');
      // convict leaves out falsy values (0, false, ''): name the value in every message.
      const key = /^([A-Za-z0-9_.]+): /.exec(l)?.[1];
      if (key && keys.has(key) && !SECRET_KEYS.includes(key) && !l.includes(': value was ')) l += `: value was ${JSON.stringify(conf.get(key as never))}`;
      return l;
    });
    throw new ConfigError(`${where} is invalid (sources: file < env BLIP2_* < flags):\n  ${lines.join('\n  ')}`);
  }
  const c = conf.getProperties();
  // Cross-key rules.
  const rule = (ok: boolean, msg: string) => {
    if (!ok) throw new ConfigError(`${where} is invalid: ${msg}`);
  };
  rule(c.world.min <= c.world.max, `world.min (${c.world.min}) must be <= world.max (${c.world.max})`);
  rule(c.membership.heartbeatMs * 2 <= c.membership.timeoutMs,
    `membership.timeoutMs (${c.membership.timeoutMs}) must be at least twice membership.heartbeatMs (${c.membership.heartbeatMs})`);
  rule(c.optim.minLr <= c.optim.lr, `optim.minLr (${c.optim.minLr}) must be <= optim.lr (${c.optim.lr})`);
  rule(!(c.train.stage === 2 && c.eval.tasks.includes('retrieval')),
    'eval.tasks: retrieval needs stage 1 (it scores with the Q-Former\'s ITC and ITM heads, which stage 2 does not train or keep); drop it for train.stage 2');
  rule(!(c.train.stage === 1 && c.eval.tasks.includes('vqa')),
    'eval.tasks: vqa needs stage 2 (it answers with the language model); drop it for train.stage 1');
  rule(c.eval.intervalSteps === 0 || c.eval.tasks.length > 0, `eval.intervalSteps (${c.eval.intervalSteps}) needs eval.tasks (the tasks to evaluate)`);
  const tls = [c.grpc.tls.certFile, c.grpc.tls.keyFile, c.grpc.tls.caFile];
  rule(tls.every((f) => f === '') || tls.every((f) => f !== ''),
    `grpc.tls.certFile, grpc.tls.keyFile and grpc.tls.caFile must be set together (got ${JSON.stringify(c.grpc.tls)})`);

  // Derived defaults and paths.
  const base = file ? dirname(file) : process.cwd();
  const abs = (p: string) => (p === '' || isAbsolute(p) ? p : resolve(base, p));
  c.job.runDir = c.job.runDir ? abs(c.job.runDir) : resolve(process.cwd(), 'runs', c.job.id);
  c.checkpoint.dir = c.checkpoint.dir ? abs(c.checkpoint.dir) : join(c.job.runDir, 'checkpoints');
  c.model.config = abs(c.model.config);
  c.model.checkpoint = abs(c.model.checkpoint);
  c.model.languageModel = abs(c.model.languageModel);
  c.nats.credsFile = abs(c.nats.credsFile);
  c.grpc.tls = { certFile: abs(c.grpc.tls.certFile), keyFile: abs(c.grpc.tls.keyFile), caFile: abs(c.grpc.tls.caFile) };
  c.data.root = c.data.root ? abs(c.data.root) : join(c.job.runDir, 'data');
  c.data.tokenizer = c.data.tokenizer ? abs(c.data.tokenizer) : join(c.data.root, 'tokenizer.json');
  c.data.lmTokenizer = c.data.lmTokenizer ? abs(c.data.lmTokenizer) : join(c.data.root, 'opt-tokenizer', 'tokenizer.json');
  if (!c.node.id) c.node.id = `${hostname()}-${process.pid}`;
  if (!c.grpc.advertiseHost) c.grpc.advertiseHost = c.grpc.host;

  return { config: c, print: () => printJobConfig(c), file };
}

const SECRET_KEYS = configKeys().filter((k) => (leafOf(k) as { sensitive?: boolean }).sensitive === true);

/** The configuration as indented JSON, secrets masked ('[Sensitive]' when set, '' when empty). */
export function printJobConfig(c: JobConfig): string {
  const clone = JSON.parse(JSON.stringify(c)) as Record<string, Record<string, unknown>>;
  for (const k of SECRET_KEYS) {
    const [a, b] = k.split('.') as [string, string];
    if (clone[a]![b]) clone[a]![b] = '[Sensitive]';
  }
  return JSON.stringify(clone, null, 2);
}

/** One line per key: path, env var, default and doc (for `blip2 config --keys`). */
export function describeConfigKeys(): string {
  return configKeys()
    .map((k) => {
      const node = leafOf(k) as { doc: string; default: unknown };
      return `${k}  (${envOf(k)}, default ${JSON.stringify(node.default)})\n    ${node.doc}`;
    })
    .join('\n');
}

/**
 * The `engine` section alone, from the environment through the same schema (BLIP2_ENGINE, BLIP2_ENGINE_THREADS, …):
 * for tools that start the tensor engine without a job config (benchmarks, tests). Throws ConfigError on a bad value.
 */
export function engineConfigFromEnv(env: NodeJS.ProcessEnv = process.env): EngineConfig {
  try {
    const conf = convict<{ engine: EngineConfig }>({ engine: fullSchema.engine } as unknown as convict.Schema<{ engine: EngineConfig }>, { env, args: [] });
    conf.validate({ allowed: 'strict' });
    return conf.get('engine');
  } catch (e) {
    throw new ConfigError(`engine config from environment: ${(e as Error).message}`);
  }
}
