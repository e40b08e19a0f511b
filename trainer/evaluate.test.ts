// evaluateCheckpoint on checkpoints written here through the checkpoint code (tiny preset, random weights: nothing is
// trained, the wiring is what is checked): the report's shape, chance levels against the closed form, the baselines
// against the scorers run independently, figures in range and consistent, the same figures twice, the JSON file
// beside the checkpoint, and the refusals (retrieval in stage 2, vqa in stage 1, a missing split).
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaptionTokenizer, preCaption, readEvalSplit } from '../dataloader';
import { MODEL_FILE } from './checkpoint';
import { modelConfigFor } from './core';
import { initEngine, tf } from './engine';
import { scoreCaptions } from './eval';
import { evalFigures, evaluateCheckpoint, formatEvalReport, singleAnswerAccuracy, taskRefusal, type EvalReport } from './evaluate';
import { InferenceModel, readImageBytes, type InferenceSettings } from './inference';
import { createParams, disposeParams, loadParams, presetConfig, stage1Features, VisionBackbone } from './model';
import { makeEvalFixture } from './testing/eval-fixture';

let work = '';
let data = '';
let stage1 = '';
let stage2 = '';
let s1: InferenceSettings;
let s2: InferenceSettings;

beforeAll(async () => {
  await initEngine({ engine: 'cpu' }); // the tiny model runs faster on cpu than on wasm
  ({ work, data, stage1, stage2, s1, s2 } = await makeEvalFixture());
}, 120_000);
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** 1 − C(m − g, k) / C(m, k) in percent, from the binomial coefficients themselves. */
function chance(m: number, g: number, k: number): number {
  const binom = (n: number, r: number) => {
    if (r > n) return 0;
    let v = 1;
    for (let i = 1; i <= r; i++) v = (v * (n - r + i)) / i;
    return v;
  };
  return 100 * (1 - binom(m - g, Math.min(k, m)) / binom(m, Math.min(k, m)));
}

describe('evaluateCheckpoint, stage 1', () => {
  let report: EvalReport;

  it('retrieval and captions: the report\'s shape, chance levels, baseline, ranges, and the JSON beside the checkpoint', async () => {
    const tensors = tf.memory().numTensors;
    const parts = new Set<string>();
    report = await evaluateCheckpoint({
      checkpoint: stage1, data, tasks: ['retrieval', 'caption'], settings: s1, beams: 2, maxLength: 8, minLength: 2,
      progress: (p) => parts.add(p.task),
    });
    expect(tf.memory().numTensors).toBe(tensors); // everything the evaluation made is freed
    expect(parts).toEqual(new Set(['retrieval', 'caption']));
    expect(report).toMatchObject({ checkpoint: stage1, split: 'val', stage: 1, step: 4 });
    expect(report.vqa).toBeUndefined();

    const r = report.retrieval!;
    expect(r).toMatchObject({ images: 12, texts: 24, k: 24 });
    // Chance: each image has 2 of the 24 texts; each text 1 of the 12 images.
    for (const k of [1, 5, 10] as const) {
      expect(r.chance[`txt_r${k}`]).toBeCloseTo(chance(24, 2, k), 10);
      expect(r.chance[`img_r${k}`]).toBeCloseTo(chance(12, 1, k), 10);
    }
    expect(r.chance.img_r1).toBeCloseTo(100 / 12, 10);
    for (const key of ['txt_r1', 'txt_r5', 'txt_r10', 'img_r1', 'img_r5', 'img_r10'] as const) {
      expect(r[key]).toBeGreaterThanOrEqual(0);
      expect(r[key]).toBeLessThanOrEqual(100);
      // A recall is a count over 12 images or 24 texts.
      expect(Number.isInteger(Math.round((r[key] * (key.startsWith('txt') ? 12 : 24)) / 100 * 1e6) / 1e6)).toBe(true);
    }
    expect(r.txt_r1).toBeLessThanOrEqual(r.txt_r5);
    expect(r.txt_r5).toBeLessThanOrEqual(r.txt_r10);
    expect(r.img_r1).toBeLessThanOrEqual(r.img_r5);
    expect(r.r_mean).toBeCloseTo((r.txt_r1 + r.txt_r5 + r.txt_r10 + r.img_r1 + r.img_r5 + r.img_r10) / 6, 10);
    // The synthetic captions' probe: per image, 8 colour (4 absent colours for each object), 2 shape, 2 size, 2 axis, 1 relation and 1 of each swap
    // variant; each figure a count over those pairs.
    const pairs = { colour: 8, shape: 2, size: 2, axis: 2, relation: 1, 'colour binding': 1, 'shape binding': 1 };
    expect(Object.keys(r.attributes!).sort()).toEqual(Object.keys(pairs).sort());
    for (const [kind, n] of Object.entries(pairs)) {
      const a = r.attributes![kind as keyof typeof pairs]!;
      expect(a.pairs, kind).toBe(12 * n);
      expect(Number.isInteger(Math.round(((a.preferred * a.pairs) / 100) * 1e6) / 1e6), kind).toBe(true);
    }
    expect(evalFigures(report).filter((f) => f.metric.startsWith('tells_')).map((f) => [f.metric, f.baseline])).toContainEqual(['tells_colour_binding', 50]);

    const c = report.caption!;
    expect(c).toMatchObject({ images: 12, beams: 2, maxLength: 8, minLength: 2 });
    expect(c.samples).toHaveLength(5);
    for (const key of ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4'] as const) {
      expect(c[key]).toBeGreaterThanOrEqual(0);
      expect(c[key]).toBeLessThanOrEqual(1);
    }
    expect(c.CIDEr).toBeGreaterThanOrEqual(0);
    // The baseline: the most common caption of the train split, scored by the caption scorers directly.
    const train = await readEvalSplit(data, 'train', { images: false });
    const counts = new Map<string, number>();
    for (const cap of train.samples.flatMap((s) => s.captions)) counts.set(cap, (counts.get(cap) ?? 0) + 1);
    const top = Math.max(...counts.values());
    expect(counts.get(c.baseline.caption)).toBe(top);
    const val = await readEvalSplit(data, 'val', { images: false });
    const ids = val.samples.map((s) => s.id);
    const key = (id: string) => JSON.stringify(id); // scoreCaptions' map keys
    const base = scoreCaptions({ ids, predictions: new Map(ids.map((id) => [key(id), c.baseline.caption])), references: new Map(val.samples.map((s) => [key(s.id), s.captions])) });
    expect(c.baseline).toEqual({ caption: c.baseline.caption, Bleu_1: base.Bleu_1, Bleu_2: base.Bleu_2, Bleu_3: base.Bleu_3, Bleu_4: base.Bleu_4, CIDEr: base.CIDEr });
    expect(c.samples[0]!.references).toEqual(val.samples[0]!.captions);

    // The JSON beside the checkpoint is the report.
    expect(report.file).toBe(join(stage1, 'eval-val.json'));
    expect(JSON.parse(readFileSync(report.file!, 'utf8'))).toEqual(JSON.parse(JSON.stringify(report)));
    const table = formatEvalReport(report);
    expect(table).toContain(`retrieval  img_r1`);
    expect(table).toMatch(new RegExp(`caption\\s+CIDEr\\s+${c.CIDEr.toFixed(4)}\\s+${c.baseline.CIDEr.toFixed(4)}`));
  }, 120_000);

  it('gives the same figures a second time (and --limit takes the first images)', async () => {
    const again = await evaluateCheckpoint({ checkpoint: stage1, data, tasks: ['retrieval', 'caption'], settings: s1, beams: 2, maxLength: 8, minLength: 2, write: false });
    expect({ ...again, seconds: 0, file: undefined }).toEqual({ ...report, seconds: 0, file: undefined });
    const few = await evaluateCheckpoint({ checkpoint: stage1, data, tasks: ['retrieval'], settings: s1, limit: 5, k: 3, write: false });
    expect(few.retrieval).toMatchObject({ images: 5, texts: 10, k: 3 });
    expect(few.retrieval!.chance.img_r5).toBeCloseTo(100, 10);
  }, 120_000);

  it('refuses vqa, a missing split, and `all` runs what stage 1 can', async () => {
    await expect(evaluateCheckpoint({ checkpoint: stage1, data, tasks: ['vqa'], settings: s1 })).rejects.toThrow(/--task vqa: vqa needs a stage-2 checkpoint/);
    await expect(evaluateCheckpoint({ checkpoint: stage1, data, split: 'test', tasks: ['caption'], settings: s1 })).rejects.toThrow(/no dataset of split "test" \(the index has: train, val\)/);
    expect(taskRefusal('retrieval', 1)).toBeUndefined();
  }, 60_000);
});

describe('retrieval scores', () => {
  it('ITC similarity of each image with its caption equals the stage-1 features computed independently', async () => {
    const model = await InferenceModel.load(s1);
    const split = await readEvalSplit(data, 'val', { limit: 6 });
    const pixels = (await readImageBytes(split.samples.map((x) => ({ name: x.id, bytes: x.image! })), model.imageSize)).map((x) => x.pixels);
    const texts = split.samples.map((x) => x.captions[0]!);
    const scores = await model.retrievalScores(pixels, texts, 3);
    model.dispose();
    // The same model by another path: the checkpoint's weights, the ViT from the recorded seed, the training step's
    // feature function over (image i, caption i) pairs.
    const tokenizer = CaptionTokenizer.fromFile(s1.tokenizer, { maxLength: presetConfig('tiny').lavis_config.max_txt_len });
    const config = modelConfigFor('tiny', undefined, tokenizer);
    const params = loadParams(join(stage1, MODEL_FILE), config, { stage: 1 });
    const vp = createParams(config, 9, { groups: ['vision'] });
    const vision = await VisionBackbone.fromParams(vp, config, { fp16: true });
    disposeParams(vp);
    const S = model.imageSize;
    const tok = tokenizer.encodeBatch(texts.map((t) => preCaption(t)));
    const diag = tf.tidy(() => {
      const input = tf.tensor4d(Float32Array.from(pixels.flatMap((x) => Array.from(x))), [pixels.length, 3, S, S]);
      const f = stage1Features(params, config, {
        visionHidden: vision.encode(input),
        inputIds: tf.tensor2d(tok.inputIds, [tok.batchSize, tok.seqLength], 'int32'),
        attentionMask: tf.tensor2d(tok.attentionMask, [tok.batchSize, tok.seqLength], 'int32'),
      });
      return tf.max(tf.sum(tf.mul(f.imageFeats, tf.expandDims(f.textFeat, 1)), 2), 1).dataSync(); // [B]: max_q <img_q, txt>
    });
    disposeParams(params);
    // Unit vectors in float32: a dot product of 16 terms is good to a few 1e-7.
    diag.forEach((v, i) => expect(scores.simI2t[i]![i]!).toBeCloseTo(v, 5));
    // Re-ranked entries are ITM + ITC, the others −100; the top 3 of each row are re-ranked.
    for (const row of scores.scoresI2t) expect(Array.from(row).filter((v) => v !== -100)).toHaveLength(3);
    expect(new Set(split.samples.map((_, i) => scores.simI2t[i]![0]!)).size).toBeGreaterThan(1); // images differ
  }, 120_000);

  it('one image: its ITC and ITM scores against every text (a single image once crashed the ITM row selection)', async () => {
    const model = await InferenceModel.load(s1);
    const split = await readEvalSplit(data, 'val', { limit: 2 });
    const pixels = (await readImageBytes(split.samples.map((x) => ({ name: x.id, bytes: x.image! })), model.imageSize)).map((x) => x.pixels);
    const texts = split.samples.map((x) => x.captions[0]!);
    const one = await model.retrievalScores(pixels.slice(0, 1), texts, 2);
    const two = await model.retrievalScores(pixels, texts, 2);
    model.dispose();
    expect(one.scoresI2t).toHaveLength(1);
    // The first image's row is the same whether it is scored alone or with another.
    Array.from(one.scoresI2t[0]!).forEach((v, t) => expect(v).toBeCloseTo(two.scoresI2t[0]![t]!, 5));
  }, 120_000);
});

describe('evaluateCheckpoint, stage 2', () => {
  it('vqa and captions with the frozen LM; accuracy and its baseline from the train split\'s answers', async () => {
    const r = await evaluateCheckpoint({ checkpoint: stage2, data, tasks: ['all'], settings: s2, limit: 4, beams: 1, maxLength: 4, minLength: 1 });
    expect(r.stage).toBe(2);
    expect(r.retrieval).toBeUndefined();
    expect(r.caption).toMatchObject({ images: 4 });
    const v = r.vqa!;
    expect(v.questions).toBe(24);
    expect(v.accuracy).toBeGreaterThanOrEqual(0);
    expect(v.accuracy).toBeLessThanOrEqual(100);
    // The baseline answers each question with its type's most common training answer.
    const train = (await readEvalSplit(data, 'train', { images: false })).samples.flatMap((s) => s.qa);
    const val = (await readEvalSplit(data, 'val', { images: false, limit: 4 })).samples.flatMap((s) => s.qa);
    const type = (q: string) => q.split(' ').slice(0, 2).join(' ');
    const top = (t: string) => {
      const counts = new Map<string, number>();
      for (const q of train.filter((x) => type(x.question) === t)) counts.set(q.answer, (counts.get(q.answer) ?? 0) + 1);
      return [...counts].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
    };
    const hits = val.filter((q) => top(type(q.question)) === q.answer).length;
    expect(v.baseline).toBeCloseTo((100 * hits) / 24, 10);
    expect(Object.values(v.byType).reduce((n, t) => n + t.questions, 0)).toBe(24);
    expect(existsSync(join(stage2, 'eval-val.json'))).toBe(true);
  }, 120_000);

  it('refuses retrieval: a stage-2 checkpoint holds no ITC/ITM heads', async () => {
    await expect(evaluateCheckpoint({ checkpoint: stage2, data, tasks: ['retrieval'], settings: s2 })).rejects.toThrow(/--task retrieval: retrieval needs a stage-1 checkpoint/);
  }, 60_000);

  it('one reference answer: 1 for the same answer after normalisation, else 0', () => {
    expect(singleAnswerAccuracy('Red', 'red')).toBe(1);
    expect(singleAnswerAccuracy('the red', 'red')).toBe(1);
    expect(singleAnswerAccuracy('two', '2')).toBe(1);
    expect(singleAnswerAccuracy('blue', 'red')).toBe(0);
  });
});
