// The distributed stage-2 step with the real model, ranks in one process: equal to the one-process step whatever the
// per-rank batch sizes (a rank with no rows included), its loss the mean over the GLOBAL target tokens.
import { beforeAll, describe, expect, it } from 'vitest';
import { byteLevelBpeTokenizerJson, CaptionTokenizer, synthVocabulary } from '../dataloader';
import { createLocalGroup } from './local-group';
import { initEngine, tf } from './engine';
import { createParams, OptLanguageModel, presetConfig, visionSeqLen, type Blip2Config } from './model';
import { EMPTY_STAGE_BATCH, type StageBatch } from './stage-model';
import { distributedStage2Step, Stage2Runtime } from './stage2-runtime';
import { compareGrads } from './testing/stage1-fixture';

const CAPTIONS = [
  'a small red circle above a large blue square',
  'a green triangle',
  'a large yellow square left of a small red circle',
  'a blue circle below a green square',
  'a small purple triangle right of a large green circle',
  'a red square',
];

let config: Blip2Config;
let tokenizer: CaptionTokenizer;
let lm: OptLanguageModel;
let vision: Float32Array;

beforeAll(async () => {
  await initEngine({ engine: 'cpu' });
  config = presetConfig('tiny');
  tokenizer = new CaptionTokenizer(byteLevelBpeTokenizerJson(synthVocabulary()), {}, { kind: 'opt', maxLength: config.lavis_config.max_txt_len });
  config.text_config.vocab_size = tokenizer.vocabSize;
  lm = OptLanguageModel.random(config, 5);
  const rowLen = visionSeqLen(config.vision_config) * config.vision_config.hidden_size;
  vision = tf.tidy(() => tf.randomNormal([CAPTIONS.length * rowLen], 0, 1, 'float32', 9).dataSync() as Float32Array);
});

const runtime = () => new Stage2Runtime(config, createParams(config, 3, { stage: 2 }), lm, tokenizer);

function slice(from: number, rows: number): StageBatch {
  if (rows === 0) return EMPTY_STAGE_BATCH;
  const rowLen = vision.length / CAPTIONS.length;
  return {
    batch: rows, visionHidden: vision.slice(from * rowLen, (from + rows) * rowLen), captions: CAPTIONS.slice(from, from + rows),
    inputIds: new Int32Array(0), attentionMask: new Int32Array(0),
  };
}

async function run(sizes: number[]) {
  const group = createLocalGroup(sizes.length);
  const models = sizes.map(runtime);
  let offset = 0;
  const results = await Promise.all(sizes.map((b, r) => {
    const local = slice(offset, b);
    offset += b;
    return distributedStage2Step(models[r]!, group[r]!, local);
  }));
  for (const m of models) m.dispose();
  return results;
}

describe('stage-2 step over in-process ranks', () => {
  it.each([[[4, 2]], [[1, 0, 5]], [[2, 3, 1]]])('ranks %j give the one-process loss and gradient of the global batch', async (sizes) => {
    const before = tf.memory().numTensors;
    const [ref] = await run([CAPTIONS.length]);
    const results = await run(sizes);
    expect(ref!.losses.lm).toBeGreaterThan(Math.log(tokenizer.vocabSize) / 2); // a random model: near chance
    for (const res of results) {
      expect(res!.globalBatch).toBe(CAPTIONS.length);
      expect(res!.losses.lm).toBeCloseTo(ref!.losses.lm, 5);
      expect(compareGrads(res!.grads, ref!.grads)).toEqual([]);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('the loss is the mean over the global batch\'s target tokens, not a mean of the ranks\' means', async () => {
    // Rank 0 holds one caption, rank 1 five: each rank's own mean, weighted by its target tokens, gives the step's loss.
    const m = runtime();
    const means = [slice(0, 1), slice(1, 5)].map((s) => {
      const text = m.tokenize(s.captions);
      const n = m.targetCount(text);
      return { n, mean: m.lossAndGrads(s.visionHidden, s.batch, text, n).loss };
    });
    m.dispose();
    const [r0, r1] = means as [{ n: number; mean: number }, { n: number; mean: number }];
    expect(r0.n).toBeLessThan(r1.n / 3);
    const results = await run([1, 5]);
    expect(results[0]!.losses.lm).toBeCloseTo((r0.n * r0.mean + r1.n * r1.mean) / (r0.n + r1.n), 5);
    expect(Math.abs(r0.mean - r1.mean)).toBeGreaterThan(1e-3); // so that a mean of means would differ
  });

  it('returns null on every rank when no rank has data', async () => {
    const results = await run([0, 0]);
    expect(results).toEqual([null, null]);
  });
});
