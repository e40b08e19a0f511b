// The `blip2 caption` and `blip2 ask` subcommands: image files in, text out, from a trained stage-1 or stage-2
// checkpoint (trainer/inference.ts): captions by beam search (OPT decoder for stage 2, ITG head for stage 1), and
// zero-shot answers to a question (stage 2).
import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { MODEL_PRESETS, UsageError } from '../common';
import type { InferenceSettings } from '../trainer';

interface ModelOptions {
  checkpoint: string;
  config?: string;
  data?: string;
  languageModel?: string;
  preset?: string;
  json: boolean;
}

/** The options both commands take to find the model. */
function modelOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--checkpoint <path>', 'a trainer checkpoint (checkpoints/step-N), a job\'s run directory (its last commit), or a Hugging Face BLIP-2 folder (sharded safetensors with an index and config.json; its tokenizer.json serves the OPT)')
    .option('--config <file>', 'the job\'s config (YAML/JSON) for the preset, data folder and language model (default: the run\'s job.resolved.json)')
    .option('--data <dir>', 'data folder with tokenizer.json (and opt-tokenizer/tokenizer.json for stage 2)')
    .option('--language-model <file>', 'stage 2: the frozen LM\'s safetensors or Hugging Face folder (the job\'s model.languageModel)')
    .addOption(new Option('--preset <name>', 'model preset (default: the job\'s, else tiny)').choices([...MODEL_PRESETS]))
    .option('--json', 'print JSON instead of lines', false);
}

function int(name: string, v: string, min: number): number {
  if (!/^\d+$/.test(v) || Number(v) < min) throw new UsageError(`--${name} must be an integer >= ${min}, got "${v}"`);
  return Number(v);
}

/** The settings, the images through the evaluation transform, and the model (loaded only after the images pass). */
async function prepare(images: string[], o: ModelOptions) {
  // The trainer (and its tensor engine) only for these commands: the other commands start without it.
  const { InferenceModel, inferenceImageSize, inferenceSettings, modelConfigOf, readImages } = await import('../trainer');
  const settings: InferenceSettings = inferenceSettings({
    checkpoint: o.checkpoint, configFile: o.config, data: o.data, languageModel: o.languageModel, preset: o.preset,
  });
  // The side comes from the model's config.json when there is one (a Hugging Face folder's), else from the preset.
  const inputs = await readImages(images.map((p) => resolve(p)), inferenceImageSize(settings));
  const model = await InferenceModel.load(settings);
  const shapes = modelConfigOf(settings) ? `config ${modelConfigOf(settings)}` : `preset ${settings.preset}`;
  process.stderr.write(`stage-${model.stage} model from ${model.source} (${shapes}${settings.configFile ? `, settings from ${settings.configFile}` : ''})\n`);
  return { model, pixels: inputs.map((i) => i.pixels) };
}

/** Subcommands `caption` and `ask`. */
export function registerInferenceCommands(program: Command): void {
  modelOptions(
    program
      .command('caption')
      .description(
        'Caption image files with a trained model. A stage-2 checkpoint captions with the frozen OPT after the ' +
          'Q-Former\'s soft prompt ("\\n" ends a caption), a stage-1 checkpoint with the Q-Former\'s ITG head. ' +
          'Prints one line per image: path, a tab, the caption.',
      )
      .argument('<images...>', 'image files (JPEG, PNG, WebP, ...)'),
  )
    .option('--beam <n>', 'beam width (1 = greedy search)', '5')
    .option('--max-length <n>', 'at most this many generated tokens', '30')
    .option('--min-length <n>', 'no end of caption before this many tokens', '8')
    .option('--prompt <text>', 'stage 2: a text prompt the caption continues (LAVIS\'s COCO evaluation: "a photo of")')
    .action(async (images: string[], o: ModelOptions & { beam: string; maxLength: string; minLength: string; prompt?: string }) => {
      const beams = int('beam', o.beam, 1);
      const maxLength = int('max-length', o.maxLength, 1);
      const minLength = int('min-length', o.minLength, 0);
      if (minLength > maxLength) throw new UsageError(`--min-length ${minLength} is larger than --max-length ${maxLength}`);
      const { model, pixels } = await prepare(images, o);
      if (model.stage === 1 && o.prompt) throw new UsageError('--prompt needs a stage-2 checkpoint (the stage-1 ITG head captions from [DEC] alone)');
      const limit = model.lengthLimit(model.promptLength(o.prompt ?? ''));
      if (maxLength > limit) process.stderr.write(`captions cut at ${limit} tokens: the model's positions end there (--max-length ${maxLength})\n`);
      const captions = model.caption(pixels, { beams, maxLength, minLength, prompt: o.prompt });
      model.dispose();
      if (o.json) process.stdout.write(`${JSON.stringify(images.map((image, i) => ({ image, caption: captions[i] })))}\n`);
      else images.forEach((image, i) => process.stdout.write(`${image}\t${captions[i]}\n`));
    });

  modelOptions(
    program
      .command('ask')
      .description(
        'Answer a question about an image with a trained stage-2 model (zero-shot VQA as LAVIS evaluates it): the ' +
          'prompt "Question: {} Short answer:", beam search of width 5, at most 10 new tokens. Prints the answer.',
      )
      .argument('<image>', 'an image file')
      .argument('<question>', 'the question, in quotes'),
  ).action(async (image: string, question: string, o: ModelOptions) => {
    if (!question.trim()) throw new UsageError('the question is empty');
    const { model, pixels } = await prepare([image], o);
    if (model.stage !== 2) throw new UsageError(`--checkpoint ${o.checkpoint}: a stage-1 checkpoint cannot answer questions (it has no language model); use a stage-2 checkpoint`);
    const [answer] = model.ask(pixels, [question.trim()]);
    model.dispose();
    process.stdout.write(o.json ? `${JSON.stringify({ image, question, answer })}\n` : `${answer}\n`);
  });
}
