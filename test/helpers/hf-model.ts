// A small stage-2 model written as a Hugging Face BLIP-2 folder for tests: the tiny preset with 48-pixel images, its
// vocabularies those of the synthetic data's tokenizers, the frozen parts F16, the OPT's tokenizer.json inside.
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { narrowToF16 } from '../../common';
import { CaptionTokenizer, LM_TOKENIZER_PATH, writeSynthDataset } from '../../dataloader';
import { modelConfigFor } from '../../trainer';
import { createParams, disposeParams, hfConfigJson, paramManifest, presetConfig, writeHfFolder, type Blip2Config, type ParamGroup } from '../../trainer/model';

export const FROZEN: ReadonlySet<ParamGroup> = new Set(['vision', 'language_model']);

/** Every parameter of `c` (float32) from the engine's seeded initialisation (the engine must be initialised). */
export function paramValues(c: Blip2Config, seed: number): Map<string, Float32Array> {
  const p = createParams(c, seed, { groups: ['vision', 'qformer_query', 'qformer_text', 'language_projection', 'language_model'] });
  const out = new Map([...p].map(([n, t]) => [n, Float32Array.from(t.dataSync() as Float32Array)]));
  disposeParams(p);
  return out;
}

/** The folder (`dir`), the synthetic data beside it (`data`), the config written, and the parameters' values (seed 5). */
export async function writeHfModel(): Promise<{ dir: string; data: string; config: Blip2Config; values: Map<string, Float32Array> }> {
  const root = mkdtempSync(join(tmpdir(), 'hf-model-'));
  const data = join(root, 'data');
  await writeSynthDataset({ out: data, samples: 12, shardSize: 12, imageSize: 32, seed: 0 });
  const tiny = presetConfig('tiny');
  const c = modelConfigFor('tiny', undefined, CaptionTokenizer.fromFile(join(data, 'tokenizer.json'), { maxLength: tiny.lavis_config.max_txt_len }));
  const lmTok = CaptionTokenizer.fromFile(join(data, LM_TOKENIZER_PATH), { kind: 'opt' });
  Object.assign(c.text_config, { vocab_size: lmTok.vocabSize, pad_token_id: lmTok.padTokenId, bos_token_id: lmTok.bosTokenId, eos_token_id: lmTok.bosTokenId });
  // Images of another side than the tiny preset's 32: the folder's config.json must give it.
  c.vision_config.image_size = 48;
  const values = paramValues(c, 5);
  const dir = join(root, 'hf');
  writeHfFolder(dir, paramManifest(c).map((s) => ({
    name: s.name, dtype: FROZEN.has(s.group) ? 'F16' : 'F32', shape: s.shape,
    data: () => (FROZEN.has(s.group) ? narrowToF16(values.get(s.name)!) : values.get(s.name)!),
  })), hfConfigJson(c), 30_000);
  copyFileSync(join(data, LM_TOKENIZER_PATH), join(dir, 'tokenizer.json'));
  return { dir, data, config: c, values };
}
