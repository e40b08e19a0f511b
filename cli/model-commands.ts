// The `blip2` subcommands about the model: `params` (trainable parameter counts of a preset and stage),
// `pretrain-lm` (a small OPT-shaped language model trained on a dataset's captions, stage 2's frozen LM) and
// `export` (a model written as a Hugging Face BLIP-2 checkpoint folder).
import { join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { MODEL_PRESETS, UsageError } from '../common';
import type { Stage } from '../trainer/model';

/**
 * The presets `--preset` of `params` names, in the order of trainer/model's PRESETS (its keys; model-commands.test.ts
 * checks that they agree), written here so that the help is built without loading the model.
 */
export const PARAMS_PRESETS = ['tiny', 'demo', 'small', 'blip2-opt-2.7b', 'blip2-opt-6.7b', 'base'] as const;

// The model, the data pipeline and the trainer are imported by the actions that use them, so `blip2 --help` and the
// other commands start without them.

/** Subcommands about the model: `params`, `pretrain-lm`, `export`. */
export function registerModelCommands(program: Command): void {
  program
    .command('params')
    .description('Print the number of trainable parameters of a model preset in a training stage.')
    .addOption(new Option('--preset <name>', `model preset (${PARAMS_PRESETS.join(', ')})`).default('blip2-opt-2.7b'))
    .addOption(new Option('--stage <n>', 'training stage: 1 (Q-Former pre-training) or 2 (language-model projection)').default('1'))
    .option('--by-group', 'also print the count of every parameter group (trainable or frozen)', false)
    .action(async (opts: { preset: string; stage: string; byGroup: boolean }) => {
      if (opts.stage !== '1' && opts.stage !== '2') throw new UsageError(`--stage must be 1 or 2, got "${opts.stage}"`);
      const { paramManifest, presetConfig, trainableCount, trainableGroups } = await import('../trainer/model');
      const stage = Number(opts.stage) as Stage;
      const config = presetConfig(opts.preset);
      const count = trainableCount(config, stage);
      process.stdout.write(`${count.toLocaleString('en-US')} trainable parameters (preset ${opts.preset}, stage ${stage})\n`);
      if (opts.byGroup) {
        const trained = new Set(trainableGroups(stage));
        // Stage 1 has no language model; stage 2 deletes the text-only Q-Former parts (LAVIS blip2_opt.py).
        const absent = new Set(stage === 1 ? ['language_projection', 'language_model'] : ['qformer_text']);
        const groups = new Map<string, number>();
        for (const p of paramManifest(config)) groups.set(p.group, (groups.get(p.group) ?? 0) + p.shape.reduce((a, b) => a * b, 1));
        for (const [g, n] of groups) process.stdout.write(`  ${g.padEnd(20)} ${n.toLocaleString('en-US').padStart(15)}  ${trained.has(g as never) ? 'trainable' : absent.has(g) ? 'not in this stage' : 'frozen'}\n`);
      }
    });

  program
    .command('export')
    .description(
      'Write a model as a Hugging Face BLIP-2 checkpoint folder: config.json (transformers\' Blip2Config, model_type ' +
        '"blip-2"), safetensors shards under HF parameter names with model.safetensors.index.json (one ' +
        'model.safetensors when everything fits one shard), the frozen ViT and OPT as F16, the trained parts as F32, ' +
        'for Blip2ForConditionalGeneration.from_pretrained(DIR). The stage-1 heads (Q-Former text path, ITC ' +
        'projections, ITM and ITG heads, temp) are written too; transformers\' Blip2ForConditionalGeneration leaves ' +
        'them unused.',
    )
    .requiredOption('--checkpoint <path>', 'a trainer checkpoint (checkpoints/step-N), a job\'s run directory, a safetensors file or a Hugging Face folder')
    .requiredOption('--out <dir>', 'output folder (created; weight files already in it are replaced)')
    .option('--max-shard-size <size>', 'largest shard: bytes, or with KB/MB/GB (powers of 1000) or KiB/MiB/GiB', '2GB')
    .option('--config <file>', 'the job\'s config (YAML/JSON) for the preset, tokenizer and language model (default: the run\'s job.resolved.json)')
    .option('--data <dir>', 'data folder with tokenizer.json (a trainer checkpoint\'s Q-Former vocabulary follows it)')
    .option('--language-model <file>', 'stage 2: the frozen LM\'s safetensors (the job\'s model.languageModel)')
    .addOption(new Option('--preset <name>', 'model preset (default: the job\'s, else tiny; a Hugging Face folder\'s config.json wins)').choices([...MODEL_PRESETS]))
    .action(async (o: { checkpoint: string; out: string; maxShardSize: string; config?: string; data?: string; languageModel?: string; preset?: string }) => {
      const { parseShardSize } = await import('../trainer/model');
      const maxShard = parseShardSize(o.maxShardSize);
      const { exportHfCheckpoint, inferenceSettings } = await import('../trainer');
      const settings = inferenceSettings({
        checkpoint: o.checkpoint, configFile: o.config, data: o.data, languageModel: o.languageModel, preset: o.preset, needTokenizer: false,
      });
      const out = resolve(o.out);
      const t0 = Date.now();
      const r = await exportHfCheckpoint(settings, out, maxShard, (file, i, n) => {
        process.stderr.write(`shard ${i + 1}/${n} written: ${file} (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`);
      });
      const say = (line: string) => process.stdout.write(line + '\n');
      say(`exported a stage-${r.stage} model: ${r.tensors} tensors (${r.f16} frozen as F16), ${(r.totalBytes / 1e6).toFixed(1)} MB in ${r.files.length} shard(s)`);
      for (const f of [...r.files, ...(r.index ? [r.index] : []), join(out, 'config.json')]) say(`  ${f}`);
      if (!r.groups.includes('language_model')) {
        say('note: no language model in this export (a stage-1 model, or none given): Blip2ForConditionalGeneration would initialise language_projection and language_model.* randomly; give --language-model FILE to include one');
      }
    });

  program
    .command('pretrain-lm')
    .description(
      'Train a preset\'s OPT-shaped language model on a dataset\'s captions (causal next-token loss) and write it with ' +
        'BLIP-2\'s names: the frozen LM of a stage-2 job (model.languageModel) when no pre-trained OPT is at hand, e.g. ' +
        'for the synthetic demo.',
    )
    .requiredOption('--data <dir>', 'data folder with index.json (e.g. written by `blip2 data synth`)')
    .addOption(new Option('--preset <name>', 'model preset whose text_config gives the LM\'s shape').choices([...MODEL_PRESETS]).default('tiny'))
    .option('--tokenizer <file>', 'the LM\'s tokenizer.json (default: <data>/opt-tokenizer/tokenizer.json)')
    .option('--out <file>', 'output safetensors (default: <data>/opt-lm-<preset>.safetensors)')
    .option('--steps <n>', 'optimiser steps', '300')
    .option('--batch <n>', 'captions per step', '16')
    .option('--lr <x>', 'AdamW learning rate', '0.003')
    .option('--seed <n>', 'seed of the initialisation and the batches', '1')
    .action(async (opts: { data: string; preset: string; tokenizer?: string; out?: string; steps: string; batch: string; lr: string; seed: string }) => {
      const int = (name: string, v: string, min: number) => {
        if (!/^\d+$/.test(v) || Number(v) < min) throw new UsageError(`--${name} must be an integer >= ${min}, got "${v}"`);
        return Number(v);
      };
      const lr = Number(opts.lr);
      if (!(lr > 0 && lr < 1)) throw new UsageError(`--lr must be a number in (0, 1), got "${opts.lr}"`);
      const { pretrainLm } = await import('./pretrain-lm');
      const r = await pretrainLm({
        data: opts.data, preset: opts.preset, tokenizer: opts.tokenizer, out: opts.out, steps: int('steps', opts.steps, 1),
        batchSize: int('batch', opts.batch, 1), lr, seed: int('seed', opts.seed, 0), say: (line) => process.stdout.write(line + '\n'),
      });
      process.stdout.write(`use it in a stage-2 job: model.languageModel: ${r.out}\n`);
    });
}
