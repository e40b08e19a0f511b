// The `blip2` subcommands about the model: `params` (trainable parameter counts of a preset and stage),
// `pretrain-lm` (a small OPT-shaped language model trained on a dataset's captions, stage 2's frozen LM) and
// `export` (a model written as a Hugging Face BLIP-2 checkpoint folder).
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { MODEL_PRESETS, UsageError } from '../common';
import { CaptionTokenizer, createBatchStream, loadIndex, localShardSource, planEpoch, readEvalSplit } from '../dataloader';
import { disposeParams, paramManifest, presetConfig, PRESETS, trainableCount, trainableGroups, type Stage } from '../trainer/model';
import type { ContextQaReport, LmDocument } from '../trainer';

/** Subcommands about the model: `params`, `pretrain-lm`, `export`. */
export function registerModelCommands(program: Command): void {
  program
    .command('params')
    .description('Print the number of trainable parameters of a model preset in a training stage.')
    .addOption(new Option('--preset <name>', `model preset (${Object.keys(PRESETS).join(', ')})`).default('blip2-opt-2.7b'))
    .addOption(new Option('--stage <n>', 'training stage: 1 (Q-Former pre-training) or 2 (language-model projection)').default('1'))
    .option('--by-group', 'also print the count of every parameter group (trainable or frozen)', false)
    .action((opts: { preset: string; stage: string; byGroup: boolean }) => {
      if (opts.stage !== '1' && opts.stage !== '2') throw new UsageError(`--stage must be 1 or 2, got "${opts.stage}"`);
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
      const r = await pretrainLm({
        data: opts.data, preset: opts.preset, tokenizer: opts.tokenizer, out: opts.out, steps: int('steps', opts.steps, 1),
        batchSize: int('batch', opts.batch, 1), lr, seed: int('seed', opts.seed, 0), say: (line) => process.stdout.write(line + '\n'),
      });
      process.stdout.write(`use it in a stage-2 job: model.languageModel: ${r.out}\n`);
    });
}

export interface PretrainLmOptions {
  /** Data folder with index.json, tokenizer.json and (default) opt-tokenizer/tokenizer.json. */
  data: string;
  preset: string;
  /** The LM's tokenizer.json; default <data>/opt-tokenizer/tokenizer.json. */
  tokenizer?: string;
  /** Output safetensors; default <data>/opt-lm-<preset>.safetensors. */
  out?: string;
  steps: number;
  batchSize: number;
  lr: number;
  seed: number;
  say: (line: string) => void;
}

/**
 * `blip2 pretrain-lm`: trains the preset's OPT-shaped LM on the training captions of `data` and writes it; returns
 * where, and the loss of the first step and the mean of the last ten.
 */
export async function pretrainLm(o: PretrainLmOptions): Promise<{ out: string; firstLoss: number; lastLoss: number; contextQa?: ContextQaReport }> {
  const { steps, batchSize, seed, lr, say } = o;
  const opts = { preset: o.preset };
  const data = resolve(o.data);
  const indexPath = join(data, 'index.json');
  if (!existsSync(indexPath)) throw new UsageError(`--data ${data}: no index.json (write one with \`blip2 data synth\` or \`blip2 data index\`)`);
  const tokenizerPath = resolve(o.tokenizer ?? join(data, 'opt-tokenizer', 'tokenizer.json'));
  if (!existsSync(tokenizerPath)) throw new UsageError(`--tokenizer ${tokenizerPath}: not found (\`blip2 data synth\` writes opt-tokenizer/ beside the data)`);
  const qformerTokenizer = join(data, 'tokenizer.json');
  if (!existsSync(qformerTokenizer)) throw new UsageError(`--data ${data}: no tokenizer.json (the captions are read through the data pipeline, which needs it)`);
  const out = resolve(o.out ?? join(data, `opt-lm-${opts.preset}.safetensors`));
  const config = presetConfig(opts.preset);
  const tokenizer = CaptionTokenizer.fromFile(tokenizerPath, { kind: 'opt', maxLength: config.lavis_config.max_txt_len });
  // The vocabulary is the tokenizer's; the other shapes are the preset's.
  config.text_config.vocab_size = tokenizer.vocabSize;
  config.text_config.pad_token_id = tokenizer.padTokenId;
  config.text_config.bos_token_id = config.text_config.eos_token_id = tokenizer.bosTokenId;
  // Parameters, gradients and AdamW's two moments all in float32: a few hundred million parameters at most.
  const lmParams = paramManifest(config).filter((p) => p.group === 'language_model').reduce((n, p) => n + p.shape.reduce((a, c) => a * c, 1), 0);
  if (lmParams > 200_000_000) {
    throw new UsageError(`--preset ${opts.preset}: its language model has ${lmParams.toLocaleString('en-US')} parameters; pretrain-lm trains LMs of up to 200,000,000 (float32 weights, gradients and AdamW moments); use a pre-trained checkpoint for it (model.languageModel)`);
  }

  // The captions of every training dataset, cleaned as the trainer sees them.
  const index = loadIndex(indexPath);
  const datasets = index.datasets.filter((d) => d.split !== 'val' && d.split !== 'test').map((d) => d.name);
  if (!datasets.length) throw new UsageError(`--data ${data}: the index has no training dataset (every split is val or test)`);
  // The trainer (and its tensor engine) only for this command: the other commands start without it.
  const { pretrainLanguageModel, saveLanguageModel, contextQaAccuracy, VQA_PROMPT } = await import('../trainer');
  const { initEngine } = await import('../trainer/engine');
  await initEngine();
  const captions: string[] = [];
  for await (const b of createBatchStream({
    source: localShardSource(planEpoch({ index, datasets, epoch: 0, seed, shardSizeSamples: 64 })), dataRoot: data,
    tokenizer: CaptionTokenizer.fromFile(qformerTokenizer), batchSize: 64, workers: 0, transform: { imageSize: 16 },
  })) captions.push(...b.captions);
  if (!captions.length) throw new UsageError(`--data ${data}: no usable caption`);
  // Texts read after a context at the soft prompt's positions: each image's captions after one another (the other
  // phrasing, or the same), and its questions in the VQA prompt with their answers after a caption.
  const prefixLength = config.num_query_tokens;
  const documents: LmDocument[] = [];
  for (const sample of (await readEvalSplit(data, 'train', { images: false })).samples) {
    const cs = sample.captions.map((c) => c.trim().toLowerCase());
    // As many caption texts as question texts, so that neither kind crowds out the other.
    const repeat = Math.max(1, Math.ceil(sample.qa.length / cs.length));
    for (const context of cs) {
      // The tokenizer ends every text with one "\n", as stage 2's captions end (and as generation stops).
      for (let k = 0; k < repeat; k++) for (const text of cs) documents.push({ context, text });
      // The question is read, not trained on (its words are a random draw no context determines); the answer is.
      for (const { question, answer } of sample.qa) documents.push({ context, prompt: VQA_PROMPT.replace('{}', question), text: ` ${answer}` });
    }
  }
  say(`training the ${opts.preset} preset's language model (${lmParams.toLocaleString('en-US')} parameters, vocabulary ${tokenizer.vocabSize}) on ${documents.length} texts after a context of ${prefixLength} positions (${captions.length} captions; questions with their answers): ${steps} steps of ${batchSize}`);
  const t0 = Date.now();
  const every = Math.max(1, Math.round(steps / 10));
  const r = pretrainLanguageModel({
    config, tokenizer, captions, steps, batchSize, lr, seed, prefixLength, documents: documents.length ? documents : undefined,
    onStep: (s, loss) => {
      if (s === 1 || s % every === 0 || s === steps) say(`step ${s}/${steps}  loss ${loss.toFixed(4)}  ${((Date.now() - t0) / 1000).toFixed(1)}s`);
    },
  });
  mkdirSync(dirname(out), { recursive: true });
  await saveLanguageModel(out, r.params, { preset: opts.preset, steps: String(steps), captions: String(captions.length) });
  // The ceiling of zero-shot VQA through this LM: held-out questions answered from their image's caption.
  const held = (await readEvalSplit(data, 'val', { images: false, limit: 30 }).catch(() => undefined))?.samples.filter((x) => x.qa.length) ?? [];
  let contextQa: ContextQaReport | undefined;
  if (held.length) {
    contextQa = contextQaAccuracy(r.params, config, tokenizer, held, prefixLength);
    const types = Object.entries(contextQa.byType).map(([t, v]) => `${t} ${v.accuracy.toFixed(0)}`).join(', ');
    say(`given a held-out image's caption as its context, the LM answers ${contextQa.accuracy.toFixed(1)} % of ${contextQa.questions} questions (${types}): the most that zero-shot VQA through it can score`);
  }
  disposeParams(r.params);
  const tail = r.losses.slice(-Math.min(10, r.losses.length));
  say(`loss ${r.losses[0]!.toFixed(4)} at step 1 (chance: ln ${tokenizer.vocabSize} = ${Math.log(tokenizer.vocabSize).toFixed(4)}), ${(tail.reduce((a, b) => a + b, 0) / tail.length).toFixed(4)} over the last ${tail.length} steps`);
  say(`wrote ${out}`);
  const tailMean = tail.reduce((a, b) => a + b, 0) / tail.length;
  return { out, firstLoss: r.losses[0]!, lastLoss: tailMean, contextQa };
}
