/**
 * Zero-shot evaluation of a trained checkpoint on a held-out split, as LAVIS evaluates BLIP-2 (spec §13), with a
 * chance level or a trivial baseline beside every figure:
 * - retrieval (stage 1): ITC similarity of every image-text pair, the top k re-scored as ITM + ITC, recall@1/5/10
 *   both ways with LAVIS's names (percent), and the recall of a random order (`retrievalChance`);
 * - caption: beam search (stage 1: the ITG head; stage 2: the OPT), corpus BLEU-1..4 and CIDEr-D against every
 *   reference caption of the image, beside the same scores of always answering the most common training caption;
 * - vqa (stage 2): "Question: {} Short answer:", beam 5, at most 10 new tokens, VQAv2 accuracy (percent), beside
 *   the accuracy of answering every question with the most common training answer of its question type.
 * `evaluateCheckpoint` runs the tasks and writes the report as JSON beside the checkpoint; `formatEvalReport` is
 * the console table. `blip2 eval --checkpoint`, the trainer's in-job evaluation and the launcher call them.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { UsageError } from '../common';
import { readEvalSplit, synthCaptionVariants, type EvalSample, type SynthVariantKind } from '../dataloader';
import { retrievalChance, retrievalMetrics, scoreCaptions, vqaAccuracy, normalizeVqaAnswer, type RetrievalMetrics } from './eval';
import { InferenceModel, inferenceSettings, readImageBytes, yieldToEventLoop, type InferenceSettings } from './inference';

export const EVAL_TASKS = ['retrieval', 'caption', 'vqa'] as const;
export type EvalTask = (typeof EVAL_TASKS)[number];

/** The tasks a stage can run: retrieval needs stage 1's heads, VQA stage 2's language model. */
export const STAGE_TASKS: Record<1 | 2, readonly EvalTask[]> = { 1: ['retrieval', 'caption'], 2: ['caption', 'vqa'] };

/** Why `task` cannot run on a checkpoint of `stage`, or undefined when it can. */
export function taskRefusal(task: EvalTask, stage: 1 | 2, canRetrieve = stage === 1): string | undefined {
  if (task === 'retrieval' && !canRetrieve) return 'retrieval needs a stage-1 checkpoint: it scores with the Q-Former\'s ITC and ITM heads, which a stage-2 checkpoint does not hold';
  if (task === 'vqa' && stage !== 2) return 'vqa needs a stage-2 checkpoint: it answers with the language model, which stage 1 does not have';
  return undefined;
}

export interface EvaluateOptions {
  /** A checkpoint directory, a job's run directory (its last commit) or safetensors, as for `blip2 caption`. */
  checkpoint: string;
  /** The data folder (its index.json) or an index file. */
  data: string;
  /** Held-out split. Default `val`. */
  split?: string;
  /** Tasks to run (a task the stage cannot do is refused with the reason); `all`: every task the checkpoint can do. */
  tasks: ReadonlyArray<EvalTask | 'all'>;
  /** At most this many images of the split (the first ones). Default all. */
  limit?: number;
  /** Retrieval: candidates re-scored with ITM per query. Default 128 (LAVIS k_test). */
  k?: number;
  /** Caption beam width. Default 5 (LAVIS). */
  beams?: number;
  /** Caption length limits in tokens. Defaults 30 and 8 (LAVIS); cut to the model's positions. */
  maxLength?: number;
  minLength?: number;
  /** Generated captions kept in the report. Default 5. */
  keepSamples?: number;
  /** Settings of the model (preset, tokenizers, LM); default: `inferenceSettings` from the options below. */
  settings?: InferenceSettings;
  configFile?: string;
  languageModel?: string;
  preset?: string;
  /** Write `eval-<split>.json` beside the checkpoint. Default true. */
  write?: boolean;
  /** Progress of the long parts: `done` of `total` units of `task`. */
  progress?: (p: { task: EvalTask; done: number; total: number }) => void;
}

type Chance = Pick<RetrievalMetrics, 'txt_r1' | 'txt_r5' | 'txt_r10' | 'img_r1' | 'img_r5' | 'img_r10'> & { r_mean: number };

export interface RetrievalReport extends RetrievalMetrics {
  /** Recall of a random order of the candidates (percent). */
  chance: Chance;
  images: number;
  texts: number;
  k: number;
  /**
   * Synthetic captions only (`synthCaptionVariants`): per kind of change, the percent of (image, false variant of
   * its caption) pairs in which ITC scores the true caption higher: what the model tells apart (chance 50).
   */
  attributes?: Partial<Record<SynthVariantKind, { preferred: number; pairs: number }>>;
}

export interface CaptionFigures {
  Bleu_1: number;
  Bleu_2: number;
  Bleu_3: number;
  Bleu_4: number;
  CIDEr: number;
}

export interface CaptionReport extends CaptionFigures {
  /** The same scores for answering every image with `baseline.caption`, the most common training caption. */
  baseline: CaptionFigures & { caption: string };
  images: number;
  beams: number;
  maxLength: number;
  minLength: number;
  samples: Array<{ image: string; generated: string; references: string[] }>;
}

export interface VqaReport {
  /** VQAv2 accuracy in percent (the official `overall`). */
  accuracy: number;
  /** Accuracy of the most common training answer of each question type (overall most common for unseen types). */
  baseline: number;
  questions: number;
  /** Accuracy per question type (its first two words), percent. */
  byType: Record<string, { accuracy: number; baseline: number; questions: number }>;
}

export interface EvalReport {
  /** The checkpoint directory (or safetensors) evaluated. */
  checkpoint: string;
  split: string;
  stage: 1 | 2;
  /** The checkpoint's step, when it records one. */
  step?: number;
  retrieval?: RetrievalReport;
  caption?: CaptionReport;
  vqa?: VqaReport;
  /** Wall time of the evaluation, model loading included. */
  seconds: number;
  /** Where the JSON report was written. */
  file?: string;
}

/** A question's type: its first two words (`what colour`, `is the`), as VQAv2 groups questions by their opening. */
export const questionType = (q: string) => q.toLowerCase().split(/\s+/).filter(Boolean).slice(0, 2).join(' ');

/** The most frequent value (ties: the one seen first). */
function mostCommon(values: Iterable<string>): string | undefined {
  const counts = new Map<string, number>();
  let best: string | undefined;
  for (const v of values) {
    const n = (counts.get(v) ?? 0) + 1;
    counts.set(v, n);
    if (best === undefined || n > counts.get(best)!) best = v;
  }
  return best;
}

/**
 * VQA accuracy of one question with one reference answer (the synthetic data's): the official leave-one-out rule
 * over ten identical human answers, i.e. 1 when the normalised prediction equals the normalised answer, else 0.
 * (The rule over a single answer would leave no other answer to match and score every prediction 0.)
 */
export const singleAnswerAccuracy = (prediction: string, answer: string) => vqaAccuracy(prediction, Array<string>(10).fill(normalizeVqaAnswer(answer)));

const pick = (s: CaptionFigures): CaptionFigures => ({ Bleu_1: s.Bleu_1, Bleu_2: s.Bleu_2, Bleu_3: s.Bleu_3, Bleu_4: s.Bleu_4, CIDEr: s.CIDEr });

function scoreAgainst(samples: readonly EvalSample[], prediction: (i: number) => string): CaptionFigures {
  const ids = samples.map((s) => s.id);
  return pick(scoreCaptions({
    ids,
    predictions: new Map(ids.map((id, i) => [JSON.stringify(id), prediction(i)])),
    references: new Map(samples.map((s) => [JSON.stringify(s.id), s.captions])),
  }));
}

/** Evaluates a checkpoint on a held-out split (see the file comment); throws UsageError for bad input. */
export async function evaluateCheckpoint(o: EvaluateOptions): Promise<EvalReport> {
  const t0 = performance.now();
  const split = o.split ?? 'val';
  if (o.tasks.length === 0) throw new UsageError('no evaluation task given (retrieval, caption, vqa)');
  const k = o.k ?? 128;
  const beams = o.beams ?? 5;
  const maxLength = o.maxLength ?? 30;
  const minLength = Math.min(o.minLength ?? 8, maxLength);
  if (!Number.isInteger(k) || k < 1) throw new UsageError(`--k must be an integer >= 1, got ${k}`);
  if (o.limit !== undefined && (!Number.isInteger(o.limit) || o.limit < 1)) throw new UsageError(`--limit must be an integer >= 1, got ${o.limit}`);

  // The data folder's tokenizers when it has them (the synthetic data's), else the job config's (`data.tokenizer`).
  const dataTokenizers = existsSync(join(o.data, 'tokenizer.json')) ? o.data : undefined;
  const settings = o.settings ?? inferenceSettings({ checkpoint: o.checkpoint, configFile: o.configFile, data: dataTokenizers, languageModel: o.languageModel, preset: o.preset });
  // Every refusal before the model loads: the tasks against the checkpoint's stage, then the split.
  const kind = InferenceModel.inspect(settings.checkpoint);
  const tasks: EvalTask[] = o.tasks.includes('all')
    ? STAGE_TASKS[kind.stage].concat(kind.stage === 2 && kind.canRetrieve ? ['retrieval'] : [])
    : [...new Set(o.tasks as EvalTask[])];
  for (const t of tasks) {
    const why = taskRefusal(t, kind.stage, kind.canRetrieve);
    if (why) throw new UsageError(`--task ${t}: ${why} (${settings.checkpoint} is stage ${kind.stage})`);
  }
  const data = await readEvalSplit(o.data, split, { limit: o.limit });
  if (data.samples.length === 0) throw new UsageError(`${o.data}: split "${split}" has no image with a caption`);
  if (tasks.includes('vqa') && !data.samples.some((s) => s.qa.length)) {
    throw new UsageError(`--task vqa: split "${split}" of ${o.data} has no questions (the samples' json "qa", as \`blip2 data synth\` writes)`);
  }
  const model = await InferenceModel.load(settings);
  try {
    const pixels = (await readImageBytes(data.samples.map((s) => ({ name: s.id, bytes: s.image! })), model.imageSize)).map((x) => x.pixels);
    const report: EvalReport = { checkpoint: model.source, split, stage: model.stage, step: model.step, seconds: 0 };
    const train = tasks.includes('caption') || tasks.includes('vqa') ? await readEvalSplit(o.data, 'train', { images: false }).catch(() => undefined) : undefined;

    if (tasks.includes('retrieval')) {
      const texts: string[] = [];
      const textToImg: number[] = [];
      const imgToTexts = data.samples.map((s, i) => s.captions.map((c) => (texts.push(c), textToImg.push(i), texts.length - 1)));
      const scores = await model.retrievalScores(pixels, texts, k, (done, total) => o.progress?.({ task: 'retrieval', done, total }));
      const m = retrievalMetrics(scores.scoresI2t, scores.scoresT2i, imgToTexts, textToImg);
      const c = retrievalChance(imgToTexts, texts.length);
      const chance: Chance = { ...c, r_mean: (c.txt_r1 + c.txt_r5 + c.txt_r10 + c.img_r1 + c.img_r5 + c.img_r10) / 6 };
      report.retrieval = { ...m, chance, images: pixels.length, texts: texts.length, k: Math.min(k, Math.max(pixels.length, texts.length)) };
      const attributes = await attributeProbe(model, pixels, data.samples.map((x) => x.captions[0] ?? ''));
      if (attributes) report.retrieval.attributes = attributes;
    }

    if (tasks.includes('caption')) {
      const generated: string[] = [];
      const batch = 8;
      for (let start = 0; start < pixels.length; start += batch) {
        generated.push(...model.caption(pixels.slice(start, start + batch), { beams, maxLength, minLength }, batch));
        o.progress?.({ task: 'caption', done: generated.length, total: pixels.length });
        await yieldToEventLoop();
      }
      const common = mostCommon((train?.samples ?? data.samples).flatMap((s) => s.captions)) ?? '';
      const limit = model.lengthLimit();
      report.caption = {
        ...scoreAgainst(data.samples, (i) => generated[i]!),
        baseline: { caption: common, ...scoreAgainst(data.samples, () => common) },
        images: pixels.length, beams, maxLength: Math.min(maxLength, limit), minLength: Math.min(minLength, limit),
        samples: data.samples.slice(0, o.keepSamples ?? 5).map((s, i) => ({ image: s.id, generated: generated[i]!, references: s.captions })),
      };
    }

    if (tasks.includes('vqa')) {
      const items = data.samples.flatMap((s, i) => s.qa.map((q) => ({ image: i, ...q })));
      const answers: string[] = [];
      const batch = 8;
      for (let start = 0; start < items.length; start += batch) {
        const rows = items.slice(start, start + batch);
        answers.push(...model.ask(rows.map((r) => pixels[r.image]!), rows.map((r) => r.question)));
        o.progress?.({ task: 'vqa', done: answers.length, total: items.length });
        await yieldToEventLoop();
      }
      const trainQa = (train?.samples ?? []).flatMap((s) => s.qa);
      const overall = mostCommon(trainQa.map((q) => normalizeVqaAnswer(q.answer))) ?? '';
      const byTypeAnswer = new Map<string, string>();
      for (const type of new Set(trainQa.map((q) => questionType(q.question)))) {
        byTypeAnswer.set(type, mostCommon(trainQa.filter((q) => questionType(q.question) === type).map((q) => normalizeVqaAnswer(q.answer)))!);
      }
      const byType: VqaReport['byType'] = {};
      let acc = 0;
      let base = 0;
      items.forEach((it, i) => {
        const type = questionType(it.question);
        const a = singleAnswerAccuracy(answers[i]!, it.answer);
        const b = singleAnswerAccuracy(byTypeAnswer.get(type) ?? overall, it.answer);
        acc += a;
        base += b;
        const t = (byType[type] ??= { accuracy: 0, baseline: 0, questions: 0 });
        t.accuracy += a;
        t.baseline += b;
        t.questions++;
      });
      for (const t of Object.values(byType)) {
        t.accuracy = (100 * t.accuracy) / t.questions;
        t.baseline = (100 * t.baseline) / t.questions;
      }
      report.vqa = { accuracy: (100 * acc) / Math.max(1, items.length), baseline: (100 * base) / Math.max(1, items.length), questions: items.length, byType };
    }

    report.seconds = (performance.now() - t0) / 1000;
    if (o.write ?? true) {
      const file = model.checkpointDir ? join(model.checkpointDir, `eval-${split}.json`) : join(dirname(settings.checkpoint), `${basename(settings.checkpoint).replace(/\.safetensors$/, '')}.eval-${split}.json`);
      report.file = file;
      writeFileSync(file, JSON.stringify(report, null, 2) + '\n');
    }
    return report;
  } finally {
    model.dispose();
  }
}

/**
 * For synthetic captions (every image's first caption in the grammar of `blip2 data synth`): ITC similarity of each
 * image with its caption against each variant that changes one thing (`synthCaptionVariants`), tallied by kind.
 * Undefined for any other data.
 */
async function attributeProbe(model: InferenceModel, pixels: readonly Float32Array[], captions: readonly string[]): Promise<RetrievalReport['attributes']> {
  const variants = captions.map((c) => synthCaptionVariants(c));
  if (!variants.length || variants.some((v) => !v)) return undefined;
  const texts: string[] = [];
  const rows = variants.map((v, i) => {
    const own = texts.push(captions[i]!) - 1;
    return { own, variants: v!.map((x) => ({ kind: x.kind, text: texts.push(x.caption) - 1 })) };
  });
  // ITC only: k 0 re-ranks nothing with ITM.
  const { simI2t } = await model.retrievalScores(pixels, texts, 0);
  const tally: NonNullable<RetrievalReport['attributes']> = {};
  rows.forEach((r, i) => {
    for (const v of r.variants) {
      const t = (tally[v.kind] ??= { preferred: 0, pairs: 0 });
      t.pairs++;
      if (simI2t[i]![r.own]! > simI2t[i]![v.text]!) t.preferred++;
    }
  });
  for (const t of Object.values(tally)) t.preferred = (100 * t.preferred) / t.pairs;
  return tally;
}

/** The report's figures as rows (task, metric, value, chance level or baseline): what the job exports. */
export function evalFigures(r: EvalReport): Array<{ task: EvalTask; metric: string; value: number; baseline: number }> {
  const rows: Array<{ task: EvalTask; metric: string; value: number; baseline: number }> = [];
  if (r.retrieval) {
    for (const metric of ['txt_r1', 'txt_r5', 'txt_r10', 'img_r1', 'img_r5', 'img_r10', 'r_mean'] as const) {
      rows.push({ task: 'retrieval', metric, value: r.retrieval[metric], baseline: r.retrieval.chance[metric] });
    }
    for (const [kind, a] of Object.entries(r.retrieval.attributes ?? {})) rows.push({ task: 'retrieval', metric: `tells_${kind.replace(/ /g, '_')}`, value: a.preferred, baseline: 50 });
  }
  if (r.caption) {
    for (const metric of ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr'] as const) rows.push({ task: 'caption', metric, value: r.caption[metric], baseline: r.caption.baseline[metric] });
  }
  if (r.vqa) rows.push({ task: 'vqa', metric: 'accuracy', value: r.vqa.accuracy, baseline: r.vqa.baseline });
  return rows;
}

const f4 = (x: number) => x.toFixed(4);
const f2 = (x: number) => x.toFixed(2);

/** The console table: task, metric, value, and the chance level or baseline beside it. */
export function formatEvalReport(r: EvalReport): string {
  const rows = evalFigures(r).map((f): [string, string, string, string] => {
    const fmt = f.task === 'caption' ? f4 : f2;
    return [f.task, f.metric, fmt(f.value), fmt(f.baseline)];
  });
  const head: [string, string, string, string] = ['task', 'metric', 'value', 'chance/baseline'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (row: readonly string[]) => row.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  const out = [
    `stage-${r.stage} checkpoint ${r.checkpoint}${r.step !== undefined ? ` (step ${r.step})` : ''}, split ${r.split}, ${r.seconds.toFixed(1)} s`,
    line(head),
    ...rows.map(line),
  ];
  if (r.retrieval) out.push(`retrieval: ${r.retrieval.images} images, ${r.retrieval.texts} texts, top ${r.retrieval.k} re-ranked with ITM; recall in percent, chance = a random order`);
  if (r.retrieval?.attributes) out.push('tells_*: percent of images whose caption ITC scores above the same caption with one thing changed (an object\'s colour, size or shape; the relation on the other axis, or reversed; the two colours or shapes swapped); chance 50');
  if (r.caption) {
    out.push(`caption: ${r.caption.images} images, beam ${r.caption.beams}, ${r.caption.minLength}..${r.caption.maxLength} tokens; baseline = always "${r.caption.baseline.caption}" (the most common training caption)`);
    for (const s of r.caption.samples.slice(0, 3)) out.push(`  ${s.image}: "${s.generated}"  (reference: "${s.references[0] ?? ''}")`);
  }
  if (r.vqa) out.push(`vqa: ${r.vqa.questions} questions, accuracy in percent; baseline = the most common training answer of the question's type`);
  return out.join('\n');
}
