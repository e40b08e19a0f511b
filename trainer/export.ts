/**
 * Export of a model in the layout of a Hugging Face BLIP-2 checkpoint (`blip2 export`): config.json (transformers'
 * Blip2Config), sharded safetensors under HF parameter names with model.safetensors.index.json, the frozen parts
 * (`vision_model.*` but post_layernorm, `language_model.*`) as F16, the trained parts as F32.
 *
 * The source is anything `--checkpoint` takes: a trainer checkpoint or run directory (its trained parameters; the
 * frozen ViT regenerated from the seed it records, narrowed to F16 exactly as the trainer held it; the frozen OPT from
 * the job's model.languageModel), a safetensors file, or a Hugging Face folder. Tensors are read and written one at a
 * time, so that exporting blip2-opt-2.7b holds no more than the regenerated ViT and one tensor in memory.
 */
import { existsSync } from 'node:fs';
import { narrowToF16, safetensorsHeader, safetensorsNames, toFloat32, UsageError, type LazyTensor } from '../common';
import { CaptionTokenizer } from '../dataloader';
import { modelConfigFor, resolveWeights } from './core';
import { initEngine } from './engine';
import type { InferenceSettings } from './inference';
import {
  createParams, disposeParams, hfConfigJson, loadModelConfig, matchCheckpoint, paramManifest, presetConfig, trainableGroups, writeHfFolder,
  type Blip2Config, type HfWriteResult, type ParamGroup,
} from './model';

const OPT_EMBED_TOKENS = 'language_model.model.decoder.embed_tokens.weight';
const FROZEN: ReadonlySet<ParamGroup> = new Set(['vision', 'language_model']);

export interface ExportResult extends HfWriteResult {
  stage: 1 | 2;
  config: Blip2Config;
  /** Tensors written, and those of them held F16. */
  tensors: number;
  f16: number;
  /** Groups the export holds. */
  groups: ParamGroup[];
}

/**
 * Writes the model of `settings.checkpoint` into `out` (see the file comment); `maxShardBytes` bounds each shard.
 * Every source is matched from its headers before anything is written.
 */
export async function exportHfCheckpoint(
  settings: InferenceSettings, out: string, maxShardBytes: number, onShard?: (file: string, index: number, count: number) => void,
): Promise<ExportResult> {
  const source = resolveWeights(settings.checkpoint);
  const ck = source.checkpoint;
  const held = new Set(source.files.flatMap((f) => safetensorsNames(f)));
  const stage: 1 | 2 = ck ? (ck.stage === 2 ? 2 : 1) : held.has('language_projection.weight') ? 2 : 1;
  if (!ck && !held.has('vision_model.embeddings.patch_embedding.weight')) {
    throw new UsageError(`--checkpoint ${settings.checkpoint}: neither a trainer checkpoint (no checkpoint.json) nor weights holding the ViT`);
  }
  const modelConfigFile = settings.modelConfigFile || source.hf?.config;
  let config = modelConfigFile ? loadModelConfig(modelConfigFile) : presetConfig(settings.preset);
  if (settings.tokenizer) {
    if (!existsSync(settings.tokenizer)) throw new UsageError(`tokenizer ${settings.tokenizer}: not found (the Q-Former's tokenizer.json; give --data DIR)`);
    const tokenizer = CaptionTokenizer.fromFile(settings.tokenizer, { maxLength: config.lavis_config.max_txt_len });
    config = modelConfigFor(settings.preset, modelConfigFile || undefined, tokenizer);
  } else if (ck) {
    throw new UsageError(`--checkpoint ${settings.checkpoint}: a trainer checkpoint's Q-Former vocabulary follows its tokenizer; give --data DIR or --config job.yaml`);
  }

  // Which groups come from where.
  const groups: ParamGroup[] = [...trainableGroups(stage)];
  // A weights file (not a trainer checkpoint) may hold the stage-1 heads beside a stage-2 model: they go too.
  if (stage === 2 && !ck && held.has('itm_head.weight')) groups.push('qformer_text');
  let lmFiles: string[] | undefined;
  if (stage === 2 || settings.languageModel) {
    const frozenLm = ck?.frozenFrom && ck.frozenFrom.files.some((f) => safetensorsHeader(f).has(OPT_EMBED_TOKENS)) ? ck.frozenFrom.files : undefined;
    lmFiles = settings.languageModel ? resolveWeights(settings.languageModel).files : held.has(OPT_EMBED_TOKENS) ? source.files : frozenLm;
    if (!lmFiles) throw new UsageError(`--checkpoint ${settings.checkpoint}: a stage-2 model needs its frozen language model: give --language-model FILE (the job's model.languageModel)`);
    const embed = lmFiles.map((f) => safetensorsHeader(f).get(OPT_EMBED_TOKENS)).find((x) => x);
    if (!embed) throw new UsageError(`--language-model ${lmFiles.join(', ')}: holds no ${OPT_EMBED_TOKENS}`);
    config.text_config.vocab_size = embed.shape[0]!;
  }
  const fromFiles = matchCheckpoint(source.files, config, ck ? groups : ['vision', ...groups]);
  // A trainer checkpoint whose job read its frozen ViT from weight files: the ViT from them.
  const fromFrozen = ck?.frozenFrom ? matchCheckpoint(ck.frozenFrom.files, config, ['vision']) : undefined;
  const fromLm = lmFiles ? matchCheckpoint(lmFiles, config, ['language_model']) : undefined;

  // The regenerated ViT of a trainer checkpoint: the F16 values the trainer held (VisionBackbone.fromParams, fp16).
  const regenerated = new Map<string, Uint16Array>();
  if (ck && !fromFrozen) {
    await initEngine();
    const vp = createParams(config, ck.frozenSeed, { groups: ['vision'] });
    for (const [name, t] of vp) regenerated.set(name, narrowToF16(t.dataSync() as Float32Array));
    disposeParams(vp);
  }
  const wanted = new Set<ParamGroup>(['vision', ...groups, ...(fromLm ? (['language_model'] as const) : [])]);
  const list: LazyTensor[] = [];
  let f16 = 0;
  for (const spec of paramManifest(config)) {
    if (!wanted.has(spec.group)) continue;
    const frozen = FROZEN.has(spec.group);
    if (frozen) f16++;
    const reader = spec.group === 'language_model' ? fromLm!.get(spec.name) : spec.group === 'vision' && fromFrozen ? fromFrozen.get(spec.name) : fromFiles.get(spec.name);
    const data = (): Float32Array | Uint16Array => {
      const r = regenerated.get(spec.name);
      if (r) return r;
      const t = reader!.read(spec.name);
      if (frozen) return t.dtype === 'F16' ? (t.data as Uint16Array) : narrowToF16(toFloat32(t, spec.name));
      return toFloat32(t, spec.name);
    };
    if (!reader && !regenerated.has(spec.name)) throw new UsageError(`--checkpoint ${settings.checkpoint}: no source for ${spec.name}`);
    list.push({ name: spec.name, dtype: frozen ? 'F16' : 'F32', shape: spec.shape, data });
  }
  const json = hfConfigJson(config);
  // The stage-1 text path (text FFNs of each layer) is a module transformers builds only with use_qformer_text_input.
  if (wanted.has('qformer_text')) (json.qformer_config as Record<string, unknown>).use_qformer_text_input = true;
  const result = writeHfFolder(out, list, json, maxShardBytes, onShard);
  return { ...result, stage, config, tensors: list.length, f16, groups: [...wanted] };
}
