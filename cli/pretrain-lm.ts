// `blip2 pretrain-lm`'s work (model-commands.ts defines the command; the demo calls it too): a preset's OPT-shaped
// language model trained on a dataset's captions and questions, written with BLIP-2's names, and the ceiling of
// zero-shot VQA through it measured on held-out questions.
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { UsageError } from '../common';
import { CaptionTokenizer, createBatchStream, loadIndex, localShardSource, planEpoch, readEvalSplit } from '../dataloader';
import { disposeParams, paramManifest, presetConfig } from '../trainer/model';
import type { ContextQaReport, LmDocument } from '../trainer';

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
