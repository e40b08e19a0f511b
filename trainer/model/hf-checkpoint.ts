/**
 * Hugging Face checkpoint folders, as `save_pretrained` writes them and the Hub publishes them:
 *
 *   config.json                          Blip2Config (model_type "blip-2"): vision_config, qformer_config, text_config
 *   model.safetensors.index.json         {"metadata": {"total_size": bytes}, "weight_map": {name: shard file}}
 *   model-00001-of-0000N.safetensors …   the shards ({"format": "pt"} in each header's __metadata__)
 *
 * or one `model.safetensors` without an index when everything fits one shard. Reading (`readHfFolder`) checks the
 * index against the shards' headers (every name where the index puts it, no shard holding a name the index does not
 * list) without reading tensor data. Writing (`writeHfFolder`) shards tensors in order under a size limit as
 * transformers' `save_pretrained(max_shard_size=…)` does, one tensor in memory at a time; `hfConfigJson` gives the
 * config.json that `Blip2ForConditionalGeneration.from_pretrained` reads.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dtypeBytes, numElements, SafetensorsReader, UsageError, writeSafetensorsStreaming, type LazyTensor } from '../../common';
import type { Blip2Config } from './config';

export const HF_INDEX_FILE = 'model.safetensors.index.json';
export const HF_SINGLE_FILE = 'model.safetensors';
export const HF_CONFIG_FILE = 'config.json';

/** A checkpoint folder's weight files (in shard order) and its config.json, if it has one. */
export interface HfFolder {
  dir: string;
  files: string[];
  config?: string;
}

/** Whether `dir` is a Hugging Face checkpoint folder (an index, or model.safetensors beside config.json). */
export function isHfFolder(dir: string): boolean {
  return existsSync(join(dir, HF_INDEX_FILE)) || (existsSync(join(dir, HF_SINGLE_FILE)) && existsSync(join(dir, HF_CONFIG_FILE)));
}

/**
 * The weight files of a Hugging Face checkpoint folder, checked from the index and the shards' headers alone: the
 * index must be valid JSON with a weight_map; every shard it names must exist and hold exactly the names the index
 * maps to it. Errors name the folder and list what is wrong (names, and counts when long).
 */
export function readHfFolder(dir: string): HfFolder {
  const config = existsSync(join(dir, HF_CONFIG_FILE)) ? join(dir, HF_CONFIG_FILE) : undefined;
  const indexPath = join(dir, HF_INDEX_FILE);
  if (!existsSync(indexPath)) {
    if (!existsSync(join(dir, HF_SINGLE_FILE))) throw new UsageError(`${dir}: no ${HF_INDEX_FILE} and no ${HF_SINGLE_FILE}`);
    return { dir, files: [join(dir, HF_SINGLE_FILE)], config };
  }
  let index: { weight_map?: unknown };
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8')) as typeof index;
  } catch (e) {
    throw new UsageError(`${indexPath}: not valid JSON (${(e as Error).message})`);
  }
  const map = index.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new UsageError(`${indexPath}: no "weight_map" object`);
  const byShard = new Map<string, Set<string>>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== 'string' || !file || file.includes('/') || file.includes('\\')) throw new UsageError(`${indexPath}: weight_map["${name}"] must be a file name in the folder, got ${JSON.stringify(file)}`);
    if (!byShard.has(file)) byShard.set(file, new Set());
    byShard.get(file)!.add(name);
  }
  if (!byShard.size) throw new UsageError(`${indexPath}: the weight_map is empty`);
  const absent = [...byShard.keys()].filter((f) => !existsSync(join(dir, f)));
  if (absent.length) throw new UsageError(`${indexPath}: ${absent.length} shard file(s) named by the index are missing: ${short(absent)}`);
  const problems: string[] = [];
  const files: string[] = [];
  for (const [file, names] of [...byShard].sort(([a], [b]) => a.localeCompare(b))) {
    const path = join(dir, file);
    const held = SafetensorsReader.open(path).entries;
    const notThere = [...names].filter((n) => !held.has(n));
    const notListed = [...held.keys()].filter((n) => !names.has(n));
    if (notThere.length) problems.push(`${file} lacks ${notThere.length} tensor(s) the index puts there: ${short(notThere)}`);
    if (notListed.length) problems.push(`${file} holds ${notListed.length} tensor(s) the index does not map to it: ${short(notListed)}`);
    files.push(path);
  }
  if (problems.length) throw new UsageError(`${dir}: the index and the shards disagree: ${problems.join('; ')}`);
  return { dir, files, config };
}

/** The first names of a list, and its length when it is long. */
function short(xs: readonly string[]): string {
  return xs.slice(0, 8).join(', ') + (xs.length > 8 ? `, … (${xs.length} in all)` : '');
}

/**
 * transformers' Blip2Config as config.json (`model_type` "blip-2", Blip2ForConditionalGeneration with an OPT
 * decoder), from our config; `lavis_config` carries the pre-training settings transformers does not know (it keeps
 * unknown keys as attributes), so that the file loads back here unchanged.
 */
export function hfConfigJson(config: Blip2Config): Record<string, unknown> {
  const { vision_config: v, qformer_config: q, text_config: t } = config;
  return {
    architectures: ['Blip2ForConditionalGeneration'],
    model_type: 'blip-2',
    num_query_tokens: config.num_query_tokens,
    image_text_hidden_size: config.lavis_config.embed_dim,
    use_decoder_only_language_model: true,
    initializer_factor: 1.0,
    initializer_range: 0.02,
    torch_dtype: 'float32',
    vision_config: {
      model_type: 'blip_2_vision_model', hidden_size: v.hidden_size, intermediate_size: v.intermediate_size, num_hidden_layers: v.num_hidden_layers,
      num_attention_heads: v.num_attention_heads, image_size: v.image_size, patch_size: v.patch_size, layer_norm_eps: v.layer_norm_eps,
      hidden_act: 'gelu', qkv_bias: true, attention_dropout: 0.0, ...(v.initializer_range === undefined ? {} : { initializer_range: v.initializer_range }),
    },
    qformer_config: {
      model_type: 'blip_2_qformer', vocab_size: q.vocab_size, hidden_size: q.hidden_size, num_hidden_layers: q.num_hidden_layers,
      num_attention_heads: q.num_attention_heads, intermediate_size: q.intermediate_size, max_position_embeddings: q.max_position_embeddings,
      layer_norm_eps: q.layer_norm_eps, pad_token_id: q.pad_token_id, cross_attention_frequency: q.cross_attention_frequency,
      encoder_hidden_size: q.encoder_hidden_size, hidden_act: 'gelu', hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1,
      position_embedding_type: 'absolute', ...(q.initializer_range === undefined ? {} : { initializer_range: q.initializer_range }),
    },
    text_config: {
      model_type: 'opt', architectures: ['OPTForCausalLM'], vocab_size: t.vocab_size, hidden_size: t.hidden_size, word_embed_proj_dim: t.hidden_size,
      num_hidden_layers: t.num_hidden_layers, num_attention_heads: t.num_attention_heads, ffn_dim: t.ffn_dim,
      max_position_embeddings: t.max_position_embeddings, pad_token_id: t.pad_token_id, bos_token_id: t.bos_token_id, eos_token_id: t.eos_token_id,
      do_layer_norm_before: true, activation_function: 'relu', enable_bias: true, layer_norm_elementwise_affine: true, tie_word_embeddings: true,
      dropout: 0.1, attention_dropout: 0.0, torch_dtype: 'float16',
    },
    lavis_config: { ...config.lavis_config },
  };
}

/**
 * A shard size limit: bytes, or a number with KB/MB/GB (powers of 1000, as transformers reads them) or KiB/MiB/GiB.
 */
export function parseShardSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?\s*$/i.exec(text);
  const unit = m?.[2]?.toUpperCase() ?? 'B';
  const scale: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30 };
  const bytes = m ? Math.floor(Number(m[1]) * scale[unit]!) : NaN;
  if (!(bytes >= 1)) throw new UsageError(`--max-shard-size must be a size such as 2GB, 500MB or 1000000 (bytes), got "${text}"`);
  return bytes;
}

/** How `writeHfFolder` split the tensors. */
export interface HfWriteResult {
  files: string[];
  /** The index file, when there is more than one shard. */
  index?: string;
  totalBytes: number;
}

/**
 * Writes `tensors` in order into `dir` as shards of at most `maxShardBytes` of tensor data (a tensor larger than the
 * limit gets a shard of its own), named `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`, or
 * `model.safetensors` alone when one shard holds everything; plus config.json. Existing weight files of the folder
 * are removed first, so that a stale shard cannot be mistaken for part of this checkpoint.
 */
export function writeHfFolder(
  dir: string, tensors: readonly LazyTensor[], configJson: Record<string, unknown>, maxShardBytes: number,
  onShard?: (file: string, index: number, count: number) => void,
): HfWriteResult {
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(dir)) {
    if (f === HF_INDEX_FILE || /^model(-\d+-of-\d+)?\.safetensors$/.test(f)) rmSync(join(dir, f));
  }
  const shards: LazyTensor[][] = [];
  let current: LazyTensor[] = [];
  let size = 0;
  let total = 0;
  for (const t of tensors) {
    const bytes = numElements(t.shape) * dtypeBytes(t.dtype);
    if (current.length && size + bytes > maxShardBytes) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(t);
    size += bytes;
    total += bytes;
  }
  if (current.length) shards.push(current);
  const n = shards.length;
  const name = (i: number) => (n === 1 ? HF_SINGLE_FILE : `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`);
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    const file = join(dir, name(i));
    writeSafetensorsStreaming(file, shard, { format: 'pt' });
    for (const t of shard) weightMap[t.name] = name(i);
    files.push(file);
    onShard?.(file, i, n);
  });
  writeFileSync(join(dir, HF_CONFIG_FILE), JSON.stringify(configJson, null, 2) + '\n');
  if (n === 1) return { files, totalBytes: total };
  const index = join(dir, HF_INDEX_FILE);
  writeFileSync(index, JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
  return { files, index, totalBytes: total };
}
