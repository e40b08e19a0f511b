/**
 * Parameter sets: a `Map` from HF checkpoint name to tensor. Creation (initialised as the original modules are),
 * loading with names and shapes checked both ways, and saving.
 */
import { Blip2Error, SafetensorsError, SafetensorsReader, toFloat32, writeSafetensors, type SafeTensor } from '../../common';
import { paramManifest, trainableGroups, type Blip2Config, type ParamGroup, type ParamSpec, type Stage } from './config';
import { tf } from '../engine';

/** Named parameter tensors (float32), keyed by HF checkpoint name. */
export type Params = Map<string, tf.Tensor>;

/**
 * A checkpoint whose names or shapes do not match the model: fix the file or the config; nothing was loaded.
 */
export class CheckpointMismatchError extends Blip2Error {
  constructor(
    readonly path: string,
    readonly missing: string[],
    readonly unexpected: string[],
    readonly wrongShape: string[],
  ) {
    const parts: string[] = [];
    const list = (xs: string[]) => xs.slice(0, 8).join(', ') + (xs.length > 8 ? `, … (${xs.length} in all)` : '');
    if (missing.length) parts.push(`missing ${list(missing)}`);
    if (unexpected.length) parts.push(`unexpected ${list(unexpected)}`);
    if (wrongShape.length) parts.push(`wrong shape ${list(wrongShape)}`);
    super(`${path}: checkpoint does not match the model: ${parts.join('; ')}`);
  }
}

export interface ParamSetOptions {
  /** Which groups to create/load; default: the groups trained in `stage`. */
  groups?: ParamGroup[];
  /** Stage whose trainable groups are meant when `groups` is absent; default 1. */
  stage?: Stage;
}

function wantedSpecs(config: Blip2Config, options: ParamSetOptions): ParamSpec[] {
  const groups = new Set(options.groups ?? trainableGroups(options.stage ?? 1));
  return paramManifest(config).filter((p) => groups.has(p.group));
}

const VISION_EMBEDDINGS = new Set(['vision_model.embeddings.position_embedding', 'vision_model.embeddings.class_embedding']);

/**
 * The normal initialisation's standard deviation: `qformer_config.initializer_range` on the Q-Former side,
 * `vision_config.initializer_range` for the ViT's position and class embeddings (as transformers initialises them),
 * else 0.02.
 */
export function initStd(config: Blip2Config, spec: ParamSpec): number {
  if (VISION_EMBEDDINGS.has(spec.name)) return config.vision_config.initializer_range ?? 0.02;
  const qformerSide = spec.group === 'qformer_query' || spec.group === 'qformer_text' || spec.group === 'language_projection';
  return qformerSide ? config.qformer_config.initializer_range ?? 0.02 : 0.02;
}

/**
 * Fresh parameters, initialised like the original: Linear/Embedding weights N(0, 0.02), biases 0, LayerNorm 1/0,
 * query_tokens N(0, 0.02), temp 0.07 (0.02 is `qformer_config.initializer_range` on the Q-Former side when set). As in LAVIS Blip2Qformer.__init__, each layer's `*_query` FFN starts as a
 * copy of its text FFN. Deterministic in `seed`.
 */
export function createParams(config: Blip2Config, seed: number, options: ParamSetOptions = {}): Params {
  const params: Params = new Map();
  const specs = wantedSpecs(config, options);
  specs.forEach((spec, i) => {
    let t: tf.Tensor;
    if (spec.init === 'zeros') t = tf.zeros(spec.shape);
    else if (spec.init === 'ones') t = tf.ones(spec.shape);
    else if (spec.init === 'temp') t = tf.scalar(config.lavis_config.temp_init);
    else t = tf.randomNormal(spec.shape, 0, initStd(config, spec), 'float32', seed * 100_003 + i);
    params.set(spec.name, t);
  });
  for (const [name, t] of params) {
    const m = /^(qformer\.encoder\.layer\.\d+\.)(intermediate|output)_query(\..*)$/.exec(name);
    const src = m && params.get(`${m[1]}${m[2]}${m[3]}`);
    if (src) {
      t.dispose();
      params.set(name, tf.clone(src));
    }
  }
  return params;
}

/**
 * Names a published checkpoint may hold that the model does not keep as parameters of their own: OPT's output
 * projection, tied to `language_model.model.decoder.embed_tokens.weight` (OPTForCausalLM ties them; HF checkpoints
 * written before tied tensors were deduplicated store it). Skipped when loading, never written.
 */
export const TIED_NAMES: ReadonlySet<string> = new Set(['language_model.lm_head.weight']);

/** Where each tensor of a checkpoint is: its file, opened with its header read and checked (no data yet). */
export type CheckpointTensors = Map<string, SafetensorsReader>;

/**
 * The tensors of `files` matched against the model from the headers alone, before any data is read: every
 * parameter of `groups` must be present, every known name must have the manifest's shape and a floating dtype,
 * and no name may be unknown to the model (except `TIED_NAMES`). A mismatch throws `CheckpointMismatchError` with
 * the lists.
 */
export function matchCheckpoint(files: string | string[], config: Blip2Config, groups: readonly ParamGroup[]): CheckpointTensors {
  const paths = Array.isArray(files) ? files : [files];
  const all = new Map(paramManifest(config).map((p) => [p.name, p]));
  const found: CheckpointTensors = new Map();
  const unexpected: string[] = [];
  const wrongShape: string[] = [];
  for (const path of paths) {
    const reader = SafetensorsReader.open(path);
    for (const [name, t] of reader.entries) {
      const spec = all.get(name);
      if (!spec) {
        if (!TIED_NAMES.has(name)) unexpected.push(name);
      } else if (JSON.stringify(spec.shape) !== JSON.stringify(t.shape)) {
        wrongShape.push(`${name} ${JSON.stringify(t.shape)} (model ${JSON.stringify(spec.shape)})`);
      } else if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') {
        wrongShape.push(`${name} dtype ${t.dtype} (model: F32, F16 or BF16)`);
      } else found.set(name, reader);
    }
  }
  const wanted = new Set(groups);
  const missing = [...all.values()].filter((s) => wanted.has(s.group) && !found.has(s.name)).map((s) => s.name);
  if (missing.length || unexpected.length || wrongShape.length) throw new CheckpointMismatchError(paths.join(', '), missing, unexpected, wrongShape);
  return found;
}

/**
 * Load parameters from one or more safetensors files. Every wanted name must be present with the manifest's shape;
 * names the model does not know at all are rejected; known names of other groups (e.g. the ViT in a full
 * checkpoint) are skipped. The headers are matched first (`matchCheckpoint`), then only the wanted tensors are
 * read. F16/BF16 are widened to float32 (exactly).
 */
export function loadParams(files: string | string[], config: Blip2Config, options: ParamSetOptions = {}): Params {
  const wanted = wantedSpecs(config, options);
  const found = matchCheckpoint(files, config, [...new Set(wanted.map((s) => s.group))]);
  const out: Params = new Map();
  for (const spec of wanted) {
    const reader = found.get(spec.name)!;
    let values: Float32Array;
    try {
      values = toFloat32(reader.read(spec.name), spec.name);
    } catch (err) {
      throw new SafetensorsError(`${reader.path}: ${(err as Error).message}`);
    }
    out.set(spec.name, tf.tensor(values, spec.shape, 'float32'));
  }
  return out;
}

/** Save parameters as float32 safetensors, in the order of the map. */
export async function saveParams(path: string, params: Params, metadata: Record<string, string> = {}): Promise<void> {
  const tensors = new Map<string, SafeTensor>();
  for (const [name, t] of params) tensors.set(name, { dtype: 'F32', shape: t.shape, data: (await t.data()) as Float32Array });
  writeSafetensors(path, tensors, { format: 'pt', ...metadata });
}

export function disposeParams(params: Params): void {
  for (const t of params.values()) t.dispose();
}
