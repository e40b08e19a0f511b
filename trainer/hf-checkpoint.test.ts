// Hugging Face checkpoint folders: a small random checkpoint written here in the published layout (several shards,
// an index, config.json, BF16 and F16 tensors) loads with exact values; a missing key, an unexpected key, a shape
// mismatch and an index that disagrees with its shards fail with the list; `exportHfCheckpoint` round-trips, from a
// safetensors file and from a trainer checkpoint (its ViT regenerated from the recorded seed); a folder serves as
// model.checkpoint of a stage-2 job, and a trainer checkpoint of such a job reads its frozen parts from it again. The commands (`blip2 export`, `blip2 caption --checkpoint HF_DIR`) are tested
// in cli/hf-commands.test.ts.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { narrowToF16, readSafetensors, SafetensorsReader, toFloat32, widenF16, writeSafetensors, type SafeTensor } from '../common';
import { bertTokenizerJson, CaptionTokenizer, LM_TOKENIZER_PATH } from '../dataloader';
import { paramValues as values, writeHfModel } from '../test/helpers/hf-model';
import { writeCheckpoint } from './checkpoint';
import { createTrainerCore, modelConfigFor, resolveWeights } from './core';
import { Stage2Runtime } from './stage2-runtime';
import { initEngine } from './engine';
import { exportHfCheckpoint } from './export';
import type { InferenceSettings } from './inference';
import {
  CheckpointMismatchError, createParams, disposeParams, hfConfigJson, HF_INDEX_FILE, loadModelConfig, loadParams, OptLanguageModel, paramManifest,
  presetConfig, VisionBackbone, type ParamGroup,
} from './model';

const config = presetConfig('tiny');
const FROZEN = new Set<ParamGroup>(['vision', 'language_model']);

/** BF16 bits of a float32 (truncation: the test only needs some BF16 data, whose widening is then exact). */
function toBf16(v: Float32Array): Uint16Array {
  const u = new Uint32Array(v.buffer, v.byteOffset, v.length);
  return Uint16Array.from(u, (x) => x >>> 16);
}

/**
 * Writes `tensors` as a Hugging Face folder by hand (not with our writer): `shards` files named as transformers names
 * them, the index mapping each name to its file, and config.json.
 */
function writeHfByHand(dir: string, tensors: [string, SafeTensor][], shards: number, edit: { indexExtra?: Record<string, string> } = {}): void {
  const per = Math.ceil(tensors.length / shards);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = tensors.slice(s * per, (s + 1) * per);
    writeSafetensors(join(dir, file), new Map(part), { format: 'pt' });
    for (const [n, t] of part) {
      weightMap[n] = file;
      total += t.data.byteLength;
    }
  }
  Object.assign(weightMap, edit.indexExtra ?? {});
  writeFileSync(join(dir, HF_INDEX_FILE), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(hfConfigJson(config)));
}

let source: Map<string, Float32Array>;
/** The published layout: ViT in BF16, the OPT in F16, query_tokens in BF16, the rest F32. */
let published: [string, SafeTensor][];

beforeAll(async () => {
  await initEngine();
  source = values(config, 3);
  published = paramManifest(config).map((spec) => {
    const v = source.get(spec.name)!;
    if (spec.group === 'vision' || spec.name === 'query_tokens') return [spec.name, { dtype: 'BF16', shape: spec.shape, data: toBf16(v) }];
    if (spec.group === 'language_model') return [spec.name, { dtype: 'F16', shape: spec.shape, data: narrowToF16(v) }];
    return [spec.name, { dtype: 'F32', shape: spec.shape, data: v }];
  });
});

describe('a Hugging Face folder as published', () => {
  test('several shards, an index, BF16 and F16: loads with exact values, the frozen parts 16-bit resident', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hf-'));
    writeHfByHand(dir, published, 3);
    const src = resolveWeights(dir);
    expect(src.files).toHaveLength(3);
    expect(src.hf?.config).toBe(join(dir, 'config.json'));
    const c = loadModelConfig(src.hf!.config!);
    expect(c).toEqual(config);
    const params = loadParams(src.files, c, { groups: ['qformer_query', 'qformer_text', 'language_projection'] });
    const expected = new Map(published);
    for (const [name, t] of params) {
      // BF16 widens exactly (bits << 16); F32 is read as written.
      expect(Array.from(t.dataSync()), name).toEqual(Array.from(toFloat32(expected.get(name)!)));
    }
    disposeParams(params);
    const vit = VisionBackbone.load(src.files, c, { fp16: true });
    expect(vit.residentBytes).toBe(2 * vit.paramCount);
    const lm = OptLanguageModel.load(src.files, c, { fp16: true });
    expect(lm.weights.residentBytes).toBe(2 * lm.weights.paramCount);
    // An F16 row of the resident LM widens to the float32 of its half-precision bits.
    const row = lm.weights.rows('language_model.model.decoder.embed_tokens.weight', [5]);
    const w = config.text_config.hidden_size;
    expect(Array.from(row)).toEqual(Array.from(widenF16(narrowToF16(source.get('language_model.model.decoder.embed_tokens.weight')!.subarray(5 * w, 6 * w)))));
  });

  test('a missing key, an unexpected key and a shape mismatch fail before any data is read, with the list', () => {
    const variant = (edit: (t: [string, SafeTensor][]) => [string, SafeTensor][]) => {
      const dir = mkdtempSync(join(tmpdir(), 'hf-bad-'));
      writeHfByHand(dir, edit([...published]), 2);
      return resolveWeights(dir).files;
    };
    const all: ParamGroup[] = ['vision', 'qformer_query', 'qformer_text', 'language_projection'];
    const missing = variant((t) => t.filter(([n]) => n !== 'itm_head.bias' && n !== 'qformer.encoder.layer.1.output_query.dense.weight'));
    expect(() => loadParams(missing, config, { groups: all })).toThrow(CheckpointMismatchError);
    expect(() => loadParams(missing, config, { groups: all })).toThrow(/missing qformer\.encoder\.layer\.1\.output_query\.dense\.weight, itm_head\.bias/);
    const unexpected = variant((t) => [...t, ['qformer.encoder.layer.9.bogus.weight', { dtype: 'BF16', shape: [2], data: new Uint16Array(2) }]]);
    expect(() => VisionBackbone.load(unexpected, config)).toThrow(/unexpected qformer\.encoder\.layer\.9\.bogus\.weight/);
    const shape = variant((t) => t.map(([n, x]) => (n === 'language_projection.bias' ? [n, { dtype: 'F32', shape: [3], data: new Float32Array(3) }] : [n, x])));
    expect(() => loadParams(shape, config, { stage: 2 })).toThrow(/wrong shape language_projection\.bias \[3\] \(model \[40\]\)/);
    // Many missing names: the first ones and the count.
    const many = variant((t) => t.filter(([n]) => !n.startsWith('language_model.')));
    expect(() => OptLanguageModel.load(many, config)).toThrow(/missing language_model\.model\.decoder\.embed_tokens\.weight, .*, … \(\d+ in all\)/);
    // The tied LM head of older HF checkpoints is accepted and skipped.
    const tied = variant((t) => [...t, ['language_model.lm_head.weight', { dtype: 'F16', shape: [120, 40], data: new Uint16Array(4800) }]]);
    expect(() => OptLanguageModel.load(tied, config)).not.toThrow();
  });

  test('an index that disagrees with its shards is refused, naming the shard and the tensors', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hf-index-'));
    writeHfByHand(dir, published, 2, { indexExtra: { 'itm_head.weight': 'model-00001-of-00002.safetensors' } });
    // itm_head.weight sits in shard 2, but the index now puts it in shard 1.
    expect(() => resolveWeights(dir)).toThrow(/model-00001-of-00002\.safetensors lacks 1 tensor\(s\) the index puts there: itm_head\.weight; model-00002-of-00002\.safetensors holds 1 tensor\(s\) the index does not map to it: itm_head\.weight/);
    const gone = mkdtempSync(join(tmpdir(), 'hf-gone-'));
    writeHfByHand(gone, published, 2, { indexExtra: { 'itm_head.weight': 'model-00003-of-00003.safetensors' } });
    expect(() => resolveWeights(gone)).toThrow(/missing: model-00003-of-00003\.safetensors/);
  });
});

describe('export', () => {
  const settings = (checkpoint: string, more: Partial<InferenceSettings> = {}): InferenceSettings => ({
    checkpoint, preset: 'tiny', modelConfigFile: '', tokenizer: '', lmTokenizer: '', languageModel: '', ...more,
  });

  test('a safetensors file -> HF folder -> load: trained parts identical, frozen parts their F16 rounding', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'export-'));
    const file = join(dir, 'all.safetensors');
    writeSafetensors(file, new Map(paramManifest(config).map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: source.get(s.name)! } satisfies SafeTensor])));
    const out = join(dir, 'hf');
    const r = await exportHfCheckpoint(settings(file), out, 20_000);
    expect(r.stage).toBe(2);
    expect(r.files.length).toBeGreaterThan(2);
    expect(r.index).toBe(join(out, HF_INDEX_FILE));
    const index = JSON.parse(readFileSync(r.index!, 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(index.metadata.total_size).toBe(r.totalBytes);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg.model_type).toBe('blip-2');
    // Every shard within the limit unless one tensor alone exceeds it; each header says format pt.
    for (const f of r.files) {
      const rd = SafetensorsReader.open(f);
      expect(rd.metadata.format).toBe('pt');
      const bytes = [...rd.entries.values()].reduce((n, e) => n + e.shape.reduce((a, b) => a * b, 1) * (e.dtype === 'F32' ? 4 : 2), 0);
      expect(bytes <= 20_000 || rd.entries.size === 1).toBe(true);
    }
    const back = resolveWeights(out);
    const c = loadModelConfig(back.hf!.config!);
    expect(c).toEqual(config);
    const got = new Map<string, SafeTensor>();
    for (const f of back.files) for (const [n, t] of readSafetensors(f).tensors) got.set(n, t);
    expect(new Set(got.keys())).toEqual(new Set(paramManifest(config).map((s) => s.name)));
    for (const [name, t] of got) {
      const spec = paramManifest(config).find((s) => s.name === name)!;
      const want = source.get(name)!;
      if (FROZEN.has(spec.group)) {
        expect(t.dtype, name).toBe('F16');
        expect(Array.from(t.data as Uint16Array), name).toEqual(Array.from(narrowToF16(want)));
      } else {
        expect(t.dtype, name).toBe('F32');
        expect(Array.from(t.data as Float32Array), name).toEqual(Array.from(want));
      }
    }
    // Export of the export: byte-identical tensors (F16 stays F16, F32 stays F32).
    const again = await exportHfCheckpoint(settings(out), join(dir, 'hf2'), 20_000);
    for (let i = 0; i < r.files.length; i++) expect(readFileSync(again.files[i]!).equals(readFileSync(r.files[i]!))).toBe(true);
  });

  test('a trainer checkpoint -> HF folder: its parameters, and the ViT it was trained against', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'export-ck-'));
    const tokPath = join(dir, 'tokenizer.json');
    writeFileSync(tokPath, JSON.stringify(bertTokenizerJson(['a', 'red', 'square', 'blue', 'circle'])));
    const c = modelConfigFor('tiny', undefined, CaptionTokenizer.fromFile(tokPath, { maxLength: config.lavis_config.max_txt_len }));
    const p = createParams(c, 11, { stage: 1 });
    const params = new Map([...p].map(([n, t]) => [n, { shape: t.shape, data: Float32Array.from(t.dataSync() as Float32Array) }]));
    disposeParams(p);
    const zeros = new Map([...params].map(([n, v]) => [n, new Float32Array(v.data.length)]));
    const ck = writeCheckpoint(join(dir, 'checkpoints'), {
      step: 3, epoch: 0, stepInEpoch: 3, params, optimizer: { step: 3, expAvg: zeros, expAvgSq: zeros },
      rng: { seed: 1, frozenSeed: 9 }, cursors: {}, ackedShards: [], configHash: 'test', parent: null, extra: { stage: 1 },
    });
    await expect(exportHfCheckpoint(settings(ck), join(dir, 'no-tok'), 1e9)).rejects.toThrow(/follows its tokenizer; give --data DIR/);
    const out = join(dir, 'hf');
    const r = await exportHfCheckpoint(settings(ck, { tokenizer: tokPath }), out, 1e9);
    expect(r.stage).toBe(1);
    expect(r.files).toEqual([join(out, 'model.safetensors')]);
    expect(r.index).toBeUndefined();
    const got = readSafetensors(r.files[0]!).tensors;
    for (const [n, v] of params) expect(Array.from(got.get(n)!.data as Float32Array), n).toEqual(Array.from(v.data));
    const vit = createParams(c, 9, { groups: ['vision'] });
    for (const [n, t] of vit) expect(Array.from(got.get(n)!.data as Uint16Array), n).toEqual(Array.from(narrowToF16(t.dataSync() as Float32Array)));
    disposeParams(vit);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { qformer_config: Record<string, unknown> };
    expect(cfg.qformer_config.use_qformer_text_input).toBe(true);
    expect(cfg.qformer_config.vocab_size).toBe(c.qformer_config.vocab_size);
  });
});

describe('an HF folder wherever a checkpoint is taken', () => {
  test('model.checkpoint: a stage-2 trainer core starts from it, shapes from its config.json, the LM 16-bit', async () => {
    const m = await writeHfModel();
    const core = await createTrainerCore({
      stage: 2, preset: 'small', weights: m.dir, tokenizerPath: join(m.data, 'tokenizer.json'), lmTokenizerPath: join(m.data, LM_TOKENIZER_PATH), seed: 1, epochs: 1,
      optim: { lr: 1e-3, minLr: 1e-4, warmupLr: 1e-5, warmupSteps: 1, schedule: 'cosine', weightDecay: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, gradClipNorm: 0 },
      checkpointEvery: 0, maxSteps: 1, checkpointRoot: join(m.dir, '..', 'ck'),
    });
    // preset 'small' is overridden by the folder's config.json (tiny shapes, 48-pixel images).
    expect(core.config.vision_config).toEqual(m.config.vision_config);
    expect(core.config.text_config).toEqual(m.config.text_config);
    const init = core.initialValues();
    for (const [name, got] of init) expect(Array.from(got), name).toEqual(Array.from(m.values.get(name)!));
    // Recorded in each checkpoint the job writes, so that the frozen parts are read from the folder again.
    expect(core.options.frozenFrom).toEqual({ files: resolveWeights(m.dir).files, hf: true });
    core.dispose();
  });

  test('model.languageModel: the frozen OPT of a stage-2 job from the folder, 16-bit resident', async () => {
    const m = await writeHfModel();
    const core = await createTrainerCore({
      stage: 2, preset: 'tiny', modelConfigFile: join(m.dir, 'config.json'), languageModel: m.dir, tokenizerPath: join(m.data, 'tokenizer.json'),
      lmTokenizerPath: join(m.data, LM_TOKENIZER_PATH), seed: 1, epochs: 1,
      optim: { lr: 1e-3, minLr: 1e-4, warmupLr: 1e-5, warmupSteps: 1, schedule: 'cosine', weightDecay: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, gradClipNorm: 0 },
      checkpointEvery: 0, maxSteps: 1, checkpointRoot: join(m.dir, '..', 'ck-lm'),
    });
    const lm = (core.model as Stage2Runtime).lm;
    expect(lm.weights.residentBytes).toBe(2 * lm.weights.paramCount);
    const w = m.config.text_config.hidden_size;
    const embed = 'language_model.model.decoder.embed_tokens.weight';
    expect(Array.from(lm.weights.rows(embed, [7]))).toEqual(Array.from(widenF16(narrowToF16(m.values.get(embed)!.subarray(7 * w, 8 * w)))));
    core.dispose();
  });
});

describe('a trainer checkpoint of a job that started from an HF folder', () => {
  test('records the folder: its frozen ViT and LM are read from it again (not generated from the seed); gone files are named', async () => {
    const m = await writeHfModel();
    const folder = resolveWeights(m.dir);
    const stage2 = paramManifest(m.config).filter((s) => s.group === 'qformer_query' || s.group === 'language_projection');
    const params = new Map(stage2.map((s) => [s.name, { shape: s.shape, data: m.values.get(s.name)! }]));
    const zeros = new Map(stage2.map((s) => [s.name, new Float32Array(m.values.get(s.name)!.length)]));
    const ck = writeCheckpoint(join(m.dir, '..', 'checkpoints'), {
      step: 2, epoch: 0, stepInEpoch: 2, params, optimizer: { step: 2, expAvg: zeros, expAvgSq: zeros },
      rng: { seed: 1, frozenSeed: 9, frozenFrom: { files: folder.files, hf: true } }, cursors: {}, ackedShards: [], configHash: 'test', parent: null, extra: { stage: 2 },
    });
    expect(resolveWeights(ck).checkpoint?.frozenFrom).toEqual({ files: folder.files, hf: true });
    const out = join(m.dir, '..', 'exported');
    const r = await exportHfCheckpoint({
      checkpoint: ck, preset: 'tiny', modelConfigFile: join(m.dir, 'config.json'), tokenizer: join(m.data, 'tokenizer.json'), lmTokenizer: '', languageModel: '',
    }, out, 1e9);
    expect(r.groups).toContain('language_model');
    const got = readSafetensors(r.files[0]!).tensors;
    for (const spec of paramManifest(m.config)) {
      if (spec.group === 'qformer_text') continue;
      const want = m.values.get(spec.name)!;
      const t = got.get(spec.name)!;
      if (FROZEN.has(spec.group)) expect(Array.from(t.data as Uint16Array), spec.name).toEqual(Array.from(narrowToF16(want)));
      else expect(Array.from(t.data as Float32Array), spec.name).toEqual(Array.from(want));
    }
    rmSync(folder.files[0]!);
    expect(() => resolveWeights(ck)).toThrow(new RegExp(`its frozen ViT came from weight files that are gone: ${folder.files[0]}`));
  });
});
