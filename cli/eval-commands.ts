// The `blip2 eval` subcommand: scores a model's output files as BLIP-2's evaluation does (trainer/eval): COCO
// caption results against a COCO captions file (BLEU-1..4, CIDEr-D), VQA answers against VQAv2 annotations.
import { Option, type Command } from 'commander';
import { UsageError } from '../common';
import { scoreCaptionFiles, scoreVqaFiles } from '../trainer/eval';

/** Subcommand `eval`. */
export function registerEvalCommands(program: Command): void {
  program
    .command('eval')
    .description(
      'Score a model\'s output files as the COCO caption evaluation and the VQAv2 evaluation do. caption: COCO ' +
        'results [{image_id, caption}] against a COCO captions file, PTB-tokenised, corpus BLEU-1..4 and CIDEr-D. ' +
        'vqa: results [{question_id, answer}] against a VQAv2 annotations file, accuracy with the official answer ' +
        'normalisation.',
    )
    .addOption(new Option('--task <task>', 'what to score').choices(['caption', 'vqa']).makeOptionMandatory())
    .requiredOption('--predictions <file>', 'the model\'s results (JSON list)')
    .requiredOption('--references <file>', 'the ground truth: a COCO captions file (caption) or VQAv2 annotations (vqa)')
    .option('--json', 'print one JSON object instead of the table', false)
    .action((o: { task: 'caption' | 'vqa'; predictions: string; references: string; json: boolean }) => {
      if (o.task === 'caption') {
        const s = scoreCaptionFiles(o.predictions, o.references);
        if (o.json) {
          process.stdout.write(`${JSON.stringify(s)}\n`);
          return;
        }
        process.stdout.write(`caption scores, ${s.images} images (${o.predictions} against ${o.references})\n`);
        for (const k of ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr'] as const) process.stdout.write(`  ${k.padEnd(7)} ${s[k].toFixed(4)}\n`);
        return;
      }
      if (o.task === 'vqa') {
        const s = scoreVqaFiles(o.predictions, o.references);
        if (o.json) {
          process.stdout.write(`${JSON.stringify(s)}\n`);
          return;
        }
        process.stdout.write(`VQA accuracy, ${s.questions} questions (${o.predictions} against ${o.references})\n  overall ${s.overall.toFixed(2)}\n`);
        return;
      }
      throw new UsageError(`--task ${String(o.task)} is not built`);
    });
}
