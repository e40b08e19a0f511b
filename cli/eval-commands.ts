// The `blip2 eval` subcommand, two ways: a trained checkpoint evaluated on a dataset's held-out split
// (`--checkpoint --data`: retrieval, captioning, VQA with chance levels and baselines beside them, trainer/evaluate.ts),
// or a model's output files scored as BLIP-2's evaluation does (`--predictions --references`, trainer/eval): COCO
// caption results against a COCO captions file (BLEU-1..4, CIDEr-D), VQA answers against VQAv2 annotations.
import { Option, type Command } from 'commander';
import { MODEL_PRESETS, UsageError } from '../common';

// The scoring (trainer/eval), the trainer and the progress display are imported by the action that uses them, so
// `blip2 --help` and the other commands start without them.

const TASKS = ['retrieval', 'caption', 'vqa'] as const;
type Task = (typeof TASKS)[number];

interface EvalOptions {
  task: string[];
  predictions?: string;
  references?: string;
  checkpoint?: string;
  data?: string;
  split: string;
  limit?: string;
  k: string;
  beams: string;
  maxLen: string;
  minLen: string;
  config?: string;
  languageModel?: string;
  preset?: string;
  json: boolean;
}

function int(name: string, v: string, min: number): number {
  if (!/^\d+$/.test(v) || Number(v) < min) throw new UsageError(`--${name} must be an integer >= ${min}, got "${v}"`);
  return Number(v);
}

/** Scores of output files (no model). */
async function scoreFiles(o: EvalOptions, task: Task): Promise<void> {
  if (!o.predictions || !o.references) throw new UsageError('give --predictions FILE and --references FILE (score output files), or --checkpoint CKPT and --data DIR (evaluate a model)');
  const { scoreCaptionFiles, scoreVqaFiles } = await import('../trainer/eval');
  if (task === 'caption') {
    const s = scoreCaptionFiles(o.predictions, o.references);
    if (o.json) {
      process.stdout.write(`${JSON.stringify(s)}\n`);
      return;
    }
    process.stdout.write(`caption scores, ${s.images} images (${o.predictions} against ${o.references})\n`);
    for (const k of ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr'] as const) process.stdout.write(`  ${k.padEnd(7)} ${s[k].toFixed(4)}\n`);
    return;
  }
  if (task === 'vqa') {
    const s = scoreVqaFiles(o.predictions, o.references);
    if (o.json) {
      process.stdout.write(`${JSON.stringify(s)}\n`);
      return;
    }
    process.stdout.write(`VQA accuracy, ${s.questions} questions (${o.predictions} against ${o.references})\n  overall ${s.overall.toFixed(2)}\n`);
    return;
  }
  throw new UsageError('--task retrieval scores a model, not files: give --checkpoint CKPT and --data DIR');
}

/** A checkpoint on a held-out split. */
async function evaluateModel(o: EvalOptions, tasks: Array<Task | 'all'>): Promise<void> {
  if (!o.data) throw new UsageError('--checkpoint needs --data DIR (the dataset folder with index.json and the held-out split)');
  if (o.predictions || o.references) throw new UsageError('--predictions/--references score output files; they do not go with --checkpoint');
  const limit = o.limit === undefined ? undefined : int('limit', o.limit, 1);
  const k = int('k', o.k, 1);
  const beams = int('beams', o.beams, 1);
  const maxLength = int('max-len', o.maxLen, 1);
  const minLength = int('min-len', o.minLen, 0);
  // The trainer (and its tensor engine) only for this form: the other commands start without it.
  const { evaluateCheckpoint, formatEvalReport } = await import('../trainer');
  const { createTaskProgress } = await import('./progress');
  const progress = createTaskProgress(process.stderr);
  let report;
  try {
    report = await evaluateCheckpoint({
      checkpoint: o.checkpoint!, data: o.data, split: o.split, tasks, limit, k, beams, maxLength, minLength,
      configFile: o.config, languageModel: o.languageModel, preset: o.preset,
      progress: (p) => progress.update(p.task, p.done, p.total),
    });
  } finally {
    progress.stop();
  }
  if (o.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  else process.stdout.write(`${formatEvalReport(report)}\nwritten to ${report.file}\n`);
}

/** Subcommand `eval`. */
export function registerEvalCommands(program: Command): void {
  program
    .command('eval')
    .description(
      'Evaluate a trained checkpoint on a dataset\'s held-out split (--checkpoint, --data), as LAVIS evaluates ' +
        'BLIP-2: retrieval (stage 1: ITC similarity, top k re-ranked with ITM + ITC, recall@1/5/10 both ways), ' +
        'caption (beam search; BLEU-1..4 and CIDEr-D against every reference), vqa (stage 2: "Question: {} Short ' +
        'answer:", VQAv2 accuracy). Each figure is printed beside its chance level or a trivial baseline, and the ' +
        'report is written as JSON beside the checkpoint (eval-<split>.json). Or score output files ' +
        '(--predictions, --references): COCO caption results against a COCO captions file, VQA answers against ' +
        'VQAv2 annotations.',
    )
    .addOption(new Option('--task <task...>', 'what to evaluate; repeat it or give several (all = every task the checkpoint\'s stage can do)').choices([...TASKS, 'all']).makeOptionMandatory())
    .option('--checkpoint <path>', 'a trainer checkpoint (checkpoints/step-N), a job\'s run directory (its last commit), or safetensors')
    .option('--data <dir>', 'with --checkpoint: the dataset folder (index.json; its tokenizer.json and opt-tokenizer/ when it has them, else the job config\'s)')
    .option('--split <name>', 'with --checkpoint: the held-out split', 'val')
    .option('--limit <n>', 'with --checkpoint: at most this many images of the split')
    .option('--k <n>', 'retrieval: candidates per query re-ranked with ITM (LAVIS k_test)', '128')
    .option('--beams <n>', 'caption: beam width (1 = greedy)', '5')
    .option('--max-len <n>', 'caption: at most this many tokens', '30')
    .option('--min-len <n>', 'caption: no end of caption before this many tokens', '8')
    .option('--config <file>', 'the job\'s config for the preset and language model (default: the run\'s job.resolved.json)')
    .option('--language-model <file>', 'stage 2: the frozen LM\'s safetensors (the job\'s model.languageModel)')
    .addOption(new Option('--preset <name>', 'model preset (default: the job\'s, else tiny)').choices([...MODEL_PRESETS]))
    .option('--predictions <file>', 'score files: the model\'s results (JSON list)')
    .option('--references <file>', 'score files: a COCO captions file (caption) or VQAv2 annotations (vqa)')
    .option('--json', 'print one JSON object instead of the table', false)
    .action(async (o: EvalOptions) => {
      const named = [...new Set(o.task)];
      if (!o.checkpoint) {
        if (named.length !== 1 || named[0] === 'all') throw new UsageError('scoring files takes one --task (caption or vqa)');
        await scoreFiles(o, named[0] as Task);
        return;
      }
      await evaluateModel(o, named as Array<Task | 'all'>);
    });
}
