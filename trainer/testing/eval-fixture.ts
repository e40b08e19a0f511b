// Checkpoints for evaluation tests, written through the checkpoint code as the loop writes them: a synthetic dataset
// (48 samples, 12 held out), a stage-1 checkpoint and a stage-2 checkpoint of the tiny preset with random weights,
// and a frozen LM file for stage 2. Nothing is trained: the tests check wiring, not quality.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CaptionTokenizer, writeSynthDataset } from '../../dataloader';
import { writeCheckpoint } from '../checkpoint';
import { modelConfigFor } from '../core';
import type { InferenceSettings } from '../inference';
import { saveLanguageModel } from '../lm-pretrain';
import { createParams, disposeParams, presetConfig, type Params } from '../model';

export interface EvalFixture {
  work: string;
  data: string;
  stage1: string;
  stage2: string;
  lmFile: string;
  s1: InferenceSettings;
  s2: InferenceSettings;
}

/** A trainer checkpoint of `stage` holding `params` (zero optimiser moments), in `root`. */
function checkpointOf(root: string, params: Params, stage: 1 | 2, frozenSeed: number): string {
  const values = new Map([...params].map(([name, t]) => [name, { shape: [...t.shape], data: Float32Array.from(t.dataSync() as Float32Array) }]));
  const zeros = () => new Map([...values].map(([n, v]) => [n, new Float32Array(v.data.length)]));
  return writeCheckpoint(root, {
    step: 4, epoch: 0, stepInEpoch: 4, params: values, optimizer: { step: 0, expAvg: zeros(), expAvgSq: zeros() },
    rng: { seed: 5, frozenSeed }, cursors: {}, ackedShards: [], configHash: 'evaluate-test', parent: null, extra: { stage },
  });
}

/** Writes the dataset and both checkpoints under a new temporary folder (`work`; the caller removes it). */
export async function makeEvalFixture(): Promise<EvalFixture> {
  const work = mkdtempSync(join(tmpdir(), 'blip2-evaluate-'));
  const data = join(work, 'data');
  // 48 samples, 12 held out (2 captions and 6 questions each).
  await writeSynthDataset({ out: data, samples: 48, shardSize: 16, imageSize: 32, seed: 4, valFraction: 0.25 });
  const tokenizer = CaptionTokenizer.fromFile(join(data, 'tokenizer.json'), { maxLength: presetConfig('tiny').lavis_config.max_txt_len });
  const config = modelConfigFor('tiny', undefined, tokenizer);
  const p1 = createParams(config, 21, { stage: 1 });
  const stage1 = checkpointOf(join(work, 'stage1'), p1, 1, 9);
  disposeParams(p1);
  const lmTokenizer = CaptionTokenizer.fromFile(join(data, 'opt-tokenizer', 'tokenizer.json'), { kind: 'opt' });
  config.text_config.vocab_size = lmTokenizer.vocabSize;
  const lm = createParams(config, 22, { groups: ['language_model'] });
  const lmFile = join(work, 'lm.safetensors');
  await saveLanguageModel(lmFile, lm);
  disposeParams(lm);
  const p2 = createParams(config, 23, { stage: 2 });
  const stage2 = checkpointOf(join(work, 'stage2'), p2, 2, 9);
  disposeParams(p2);
  const common = { preset: 'tiny', modelConfigFile: '', tokenizer: join(data, 'tokenizer.json'), lmTokenizer: join(data, 'opt-tokenizer', 'tokenizer.json') };
  return {
    work, data, stage1, stage2, lmFile,
    s1: { ...common, checkpoint: stage1, languageModel: '' },
    s2: { ...common, checkpoint: stage2, languageModel: lmFile },
  };
}
