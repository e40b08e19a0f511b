/**
 * Scoring a VQA model's answers from files as the official VQAv2 evaluation does: a results list
 * `[{question_id, answer}]` against an annotations file `{annotations: [{question_id, answers: [{answer}]}]}` (the
 * VQAv2 `mscoco_*_annotations.json` layout). As the reference's `loadRes` asserts, the results must answer exactly
 * the questions of the annotations file, once each; anything else is refused naming the file.
 */
import { readFileSync } from 'node:fs';
import { UsageError } from '../../common';
import { vqaAccuracy } from './vqa';

export interface VqaScores {
  /** Mean accuracy × 100 (the official `overall`, before its rounding to 2 decimals). */
  overall: number;
  questions: number;
}

type QuestionId = number | string;
const key = (id: QuestionId) => JSON.stringify(id);
const isId = (v: unknown): v is QuestionId => (typeof v === 'number' && Number.isFinite(v)) || typeof v === 'string';

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    if (err instanceof SyntaxError) throw new UsageError(`${file}: not valid JSON (${err.message})`);
    throw err;
  }
}

/** `blip2 eval --task vqa --predictions … --references …`. */
export function scoreVqaFiles(predictionsFile: string, annotationsFile: string): VqaScores {
  const results = readJson(predictionsFile);
  const anns = readJson(annotationsFile) as { annotations?: unknown };
  if (!Array.isArray(results)) throw new UsageError(`${predictionsFile}: expected a VQA results list [{"question_id": …, "answer": "…"}]`);
  if (typeof anns !== 'object' || anns === null || !Array.isArray(anns.annotations)) {
    throw new UsageError(`${annotationsFile}: expected a VQA annotations file {"annotations": [{"question_id": …, "answers": [{"answer": "…"}, …]}]}`);
  }
  const answers = new Map<string, string[]>();
  anns.annotations.forEach((a: unknown, i) => {
    const o = a as { question_id?: unknown; answers?: unknown } | null;
    if (!o || !isId(o.question_id)) throw new UsageError(`${annotationsFile}: annotations[${i}] has no question_id`);
    if (!Array.isArray(o.answers) || o.answers.length === 0 || o.answers.some((x: unknown) => typeof (x as { answer?: unknown } | null)?.answer !== 'string')) {
      throw new UsageError(`${annotationsFile}: annotations[${i}] (question_id ${JSON.stringify(o.question_id)}) needs "answers": [{"answer": "…"}, …]`);
    }
    if (answers.has(key(o.question_id))) throw new UsageError(`${annotationsFile}: question_id ${JSON.stringify(o.question_id)} appears twice`);
    answers.set(key(o.question_id), (o.answers as Array<{ answer: string }>).map((x) => x.answer));
  });
  const seen = new Set<string>();
  let sum = 0;
  results.forEach((r: unknown, i) => {
    const o = r as { question_id?: unknown; answer?: unknown } | null;
    if (!o || !isId(o.question_id)) throw new UsageError(`${predictionsFile}: entry ${i} has no question_id`);
    if (typeof o.answer !== 'string') throw new UsageError(`${predictionsFile}: entry ${i} (question_id ${JSON.stringify(o.question_id)}) has no answer string`);
    const k = key(o.question_id);
    const human = answers.get(k);
    if (!human) throw new UsageError(`${predictionsFile}: question_id ${JSON.stringify(o.question_id)} is not in ${annotationsFile}`);
    if (seen.has(k)) throw new UsageError(`${predictionsFile}: more than one answer for question_id ${JSON.stringify(o.question_id)}`);
    seen.add(k);
    sum += vqaAccuracy(o.answer, human);
  });
  if (seen.size !== answers.size) throw new UsageError(`${predictionsFile}: answers ${seen.size} of the ${answers.size} questions of ${annotationsFile} (the evaluation needs all of them)`);
  return { overall: (100 * sum) / Math.max(1, seen.size), questions: seen.size };
}
