// The `blip2` subcommands about datasets: `data synth` (the synthetic caption dataset), `data index` (the shard
// index a job plans from), `data tokenizer` (a Q-Former WordPiece tokenizer.json from the captions) and
// `data check` (every sample read as a trainer reads it, with a report).
import { InvalidArgumentError, type Command } from 'commander';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { UsageError } from '../common';
import type { CheckReport, DatasetReport, Distribution, IndexNote } from '../dataloader';
import { CommandFailedError } from './errors';

// The data pipeline (image codecs, tokenizers, tar readers) and the progress bar are imported by the actions, so
// `blip2 --help` and the other commands start without them.

const int = (name: string) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`${name} must be an integer, got ${JSON.stringify(v)}`);
  return n;
};
const num = (name: string) => (v: string): number => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number, got ${JSON.stringify(v)}`);
  return n;
};

/** Subcommands about datasets: `data synth`, `data index`, `data tokenizer`, `data check`. */
export function registerDataCommands(program: Command): void {
  const data = program.command('data').description('Caption datasets: the synthetic dataset and shard indexes.');

  data
    .command('synth')
    .description(
      'Write the synthetic caption dataset: images of two coloured shapes with captions about their size, colour, ' +
        'shape and relative position, and VQA pairs in each sample\'s json; WebDataset shards in train/ and val/, ' +
        'a BERT-style tokenizer.json for its vocabulary, and index.json.',
    )
    .requiredOption('--out <dir>', 'output folder (created)')
    .option('--samples <n>', 'total samples, train + val', int('--samples'), 1000)
    .option('--shard-size <k>', 'samples per tar shard', int('--shard-size'), 1000)
    .option('--seed <s>', 'random seed', int('--seed'), 0)
    .option('--image-size <px>', 'image side in pixels', int('--image-size'), 224)
    .option('--val-fraction <f>', 'fraction of samples held out in val/', num('--val-fraction'), 0.1)
    .option('--format <fmt>', 'image encoding: jpeg or png', 'jpeg')
    .action(async (o: { out: string; samples: number; shardSize: number; seed: number; imageSize: number; valFraction: number; format: string }) => {
      if (o.format !== 'jpeg' && o.format !== 'png') throw new InvalidArgumentError(`--format must be jpeg or png, got ${JSON.stringify(o.format)}`);
      const { writeSynthDataset } = await import('../dataloader');
      const t0 = Date.now();
      const r = await writeSynthDataset({
        out: resolve(o.out), samples: o.samples, shardSize: o.shardSize, seed: o.seed, imageSize: o.imageSize,
        valFraction: o.valFraction, imageFormat: o.format,
      });
      for (const d of r.index.datasets) process.stdout.write(`${d.name}: ${d.samples} samples in ${d.shards.length} shards\n`);
      process.stdout.write(`wrote ${r.indexPath} and ${r.tokenizerPath} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    });

  data
    .command('index')
    .description(
      'Scan DIR for datasets (folders of WebDataset *.tar shards, *.jsonl / *.csv manifests, JSON arrays such as ' +
        'coco_karpathy_train.json, COCO captions_*.json) and write a shard index with sample counts and byte sizes, ' +
        'so a job can plan without reading images. A truncated tar is indexed up to its break, the samples lost recorded.',
    )
    .argument('<dir>', 'dataset root')
    .option('--out <file>', 'index file to write (default DIR/index.json)')
    .option('--coco-images <dir>', 'image folder for COCO and Karpathy annotation files (default: found beside the file, in the 2014/2017 layouts)')
    .action(async (dir: string, o: { out?: string; cocoImages?: string }) => {
      if (!existsSync(dir)) throw new UsageError(`${dir}: no such folder`);
      if (!statSync(dir).isDirectory()) throw new UsageError(`${dir}: not a folder (give the dataset root)`);
      if (o.cocoImages && !existsSync(o.cocoImages)) throw new UsageError(`--coco-images ${o.cocoImages}: no such folder`);
      const out = o.out ?? join(dir, 'index.json');
      if (!existsSync(dirname(resolve(out)))) throw new UsageError(`--out ${out}: its folder ${dirname(resolve(out))} does not exist`);
      const { describeIndex, scanDatasets, writeIndex } = await import('../dataloader');
      const { index } = await scanDatasets(dir, { cocoImageRoot: o.cocoImages, onNote: printNote });
      // Paths in an index are relative to the index file's folder.
      const rebase = (p: string) => relative(dirname(resolve(out)), resolve(dir, p)) || '.';
      for (const d of index.datasets) {
        for (const s of d.shards) s.path = rebase(s.path);
        if (d.imageRoot) d.imageRoot = rebase(d.imageRoot);
      }
      writeIndex(out, index);
      for (const d of index.datasets) {
        process.stdout.write(`${d.name} (${d.format}${d.split ? `, split ${d.split}` : ''}): ${d.samples} samples in ${d.shards.length} shards\n`);
      }
      process.stdout.write(`${describeIndex(index)}\n`);
      process.stdout.write(`wrote ${out}\n`);
    });

  data
    .command('tokenizer')
    .description(
      'Build the Q-Former\'s tokenizer from a dataset\'s own captions: a BERT-style WordPiece tokenizer.json ' +
        '(lower case, accents stripped, [PAD] [UNK] [CLS] [SEP] [MASK]; [DEC] is appended when it is loaded) whose ' +
        'vocabulary is every character of the training captions (alone and as a ##continuation, so no word is [UNK]) ' +
        'and then their most frequent words, up to --vocab-size. For data whose words BERT knows, the tokenizer.json ' +
        'of a BERT checkpoint (bert-base-uncased, as BLIP-2 uses) serves as well: set data.tokenizer to it.',
    )
    .requiredOption('--data <dir>', 'data folder with index.json (`blip2 data index` or `blip2 data synth` writes it)')
    .option('--vocab-size <n>', 'most ids in the vocabulary (special tokens and characters included)', int('--vocab-size'), 30522)
    .option('--out <file>', 'tokenizer.json to write (default DATA/tokenizer.json, where a job looks for it)')
    .option('--force', 'replace an existing file', false)
    .action(async (o: { data: string; vocabSize: number; out?: string; force: boolean }) => {
      const root = resolve(o.data);
      const indexPath = join(root, 'index.json');
      if (!existsSync(indexPath)) throw new UsageError(`--data ${root}: no index.json (write one with \`blip2 data index ${o.data}\`)`);
      if (o.vocabSize < 8) throw new UsageError(`--vocab-size must be at least 8, got ${o.vocabSize}`);
      const out = resolve(o.out ?? join(root, 'tokenizer.json'));
      if (existsSync(out) && !o.force) throw new UsageError(`--out ${out}: already exists (give --force to replace it, or another --out)`);
      if (!existsSync(dirname(out))) throw new UsageError(`--out ${out}: its folder ${dirname(out)} does not exist`);
      const { CaptionTokenizer, DatasetError, loadIndex, readIndexCaptions, wordPieceVocabulary } = await import('../dataloader');
      const t0 = Date.now();
      let captions: string[];
      let vocab;
      try {
        captions = await readIndexCaptions(loadIndex(indexPath), root, (name, samples) => process.stderr.write(`reading the captions of ${name} (${samples} samples)\n`));
        vocab = wordPieceVocabulary(captions, o.vocabSize);
      } catch (e) {
        if (e instanceof DatasetError) throw new UsageError(e.message);
        throw e;
      }
      writeFileSync(out, JSON.stringify(vocab.json, null, 1));
      // The file must load as a job loads it.
      const tok = CaptionTokenizer.fromFile(out);
      process.stdout.write(`${captions.length} captions, ${vocab.distinctWords} distinct words; ${vocab.wordsKept} have an id of their own (${(100 * vocab.coverage).toFixed(1)}% of word occurrences are one token)\n`);
      process.stdout.write(`wrote ${out}: ${vocab.vocabSize} ids (+ [DEC] = ${tok.vocabSize} for the Q-Former) in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    });

  data
    .command('check')
    .description(
      'Read every sample of every dataset under each PATH (a dataset root folder, or one shard, manifest or ' +
        'annotation file) as a trainer would: decode, train transform, tokenizer. Prints per dataset the samples ' +
        'usable, skipped by reason (with the first keys), lost to truncated tars, caption lengths, image sizes and ' +
        'duplicates. Exit 0 when some sample is usable, 1 when none is, 2 on bad usage.',
    )
    .argument('<path...>', 'dataset root folders or dataset files')
    .option('--json', 'print the report as one JSON object')
    .option('--tokenizer <file>', 'tokenizer.json to count caption tokens with (default: PATH/tokenizer.json when there is one; else words)')
    .option('--image-size <px>', 'train-transform output side', int('--image-size'), 224)
    .option('--coco-images <dir>', 'image folder for COCO and Karpathy annotation files (default: found beside the file)')
    .action(async (paths: string[], o: { json?: boolean; tokenizer?: string; imageSize: number; cocoImages?: string }) => {
      for (const p of paths) if (!existsSync(p)) throw new UsageError(`${p}: no such file or folder`);
      if (o.imageSize < 16 || o.imageSize > 1024) throw new UsageError(`--image-size must be in [16, 1024], got ${o.imageSize}`);
      const beside = paths.map((p) => join(statSync(p).isDirectory() ? p : dirname(p), 'tokenizer.json')).find((f) => existsSync(f));
      const tokenizerFile = o.tokenizer ?? beside;
      if (o.tokenizer && !existsSync(o.tokenizer)) throw new UsageError(`--tokenizer ${o.tokenizer}: no such file`);
      const { CaptionTokenizer, checkDatasets } = await import('../dataloader');
      const tokenizer = tokenizerFile ? CaptionTokenizer.fromFile(tokenizerFile, { maxLength: 1_000_000 }) : undefined;
      const progress = await progressDisplay();
      let report: CheckReport;
      try {
        report = await checkDatasets(paths, { imageSize: o.imageSize, tokenizer, cocoImageRoot: o.cocoImages, onProgress: progress.update, onNote: printNote });
      } finally {
        progress.stop();
      }
      if (o.json) process.stdout.write(JSON.stringify({ tokenizer: tokenizerFile ?? null, ...report }, null, 2) + '\n');
      else printReport(report, tokenizerFile);
      if (report.usable === 0) throw new CommandFailedError(`no usable sample in ${paths.join(' ')}`);
    });
}

/** An index note on stderr, one line. */
function printNote(n: IndexNote): void {
  process.stderr.write(`blip2: ${n.level === 'warn' ? 'warning: ' : ''}${n.path}: ${n.message}\n`);
}

/** A progress bar on a terminal; elsewhere (a pipe, a log file) a plain line at every tenth. Both on stderr. */
async function progressDisplay(): Promise<{ update: (p: { done: number; total: number; dataset: string }) => void; stop: () => void }> {
  if (process.stdout.isTTY && process.stderr.isTTY) {
    const { default: cliProgress } = await import('cli-progress');
    const bar = new cliProgress.SingleBar(
      { format: 'checking {dataset} [{bar}] {value}/{total} samples  {percentage}%  ETA {eta_formatted}', stream: process.stderr, hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update: ({ done, total, dataset }) => {
        if (!started) { bar.start(total, done, { dataset }); started = true; } else bar.update(done, { dataset });
      },
      stop: () => { if (started) bar.stop(); },
    };
  }
  let nextTenth = 1;
  return {
    update: ({ done, total, dataset }) => {
      if (total === 0 || done < (nextTenth * total) / 10) return;
      while (done >= (nextTenth * total) / 10) nextTenth++;
      process.stderr.write(`checked ${done}/${total} samples (${dataset})\n`);
    },
    stop: () => undefined,
  };
}

const fmtDist = (d: Distribution | null) => (d ? `min ${d.min}, median ${d.p50}, p95 ${d.p95}, max ${d.max}` : '-');

/** The text report: one block per dataset, then the totals. */
function printReport(r: CheckReport, tokenizerFile: string | undefined): void {
  const w = (line: string) => process.stdout.write(line + '\n');
  const block = (d: DatasetReport) => {
    w(`${d.path}: ${d.name} (${d.format}${d.split ? `, split ${d.split}` : ''}): ${d.samples} samples, ${d.usable} usable`);
    const skipped = Object.entries(d.skipped);
    w(`  skipped:       ${skipped.length ? skipped.map(([reason, s]) => `${reason} ${s.count} (${s.keys.join(', ')}${s.count > s.keys.length ? ', …' : ''})`).join('; ') : 'none'}`);
    w(`  truncation:    ${d.lostToTruncation ? `${d.lostToTruncation} sample(s) lost` : 'none'}`);
    const c = d.captionLength;
    w(`  caption ${c?.unit ?? 'tokens'}: ${fmtDist(c)}${c && c.unit === 'tokens' ? `; ${c.overMax} longer than 32 (cut in training)` : ''}`);
    w(`  image width:   ${fmtDist(d.imageWidth)}`);
    w(`  image height:  ${fmtDist(d.imageHeight)}`);
    w(`  duplicates:    ${d.duplicates.sameImage} same image, ${d.duplicates.sameKey} same key${d.duplicates.examples.length ? ` (${d.duplicates.examples.join('; ')})` : ''}`);
  };
  r.datasets.forEach(block);
  if (!r.datasets.length) w('no datasets found');
  w(`total: ${r.usable} usable, ${r.skipped} skipped, ${r.lostToTruncation} lost to truncation${tokenizerFile ? `; tokens of ${tokenizerFile}` : '; caption lengths in words (no tokenizer.json; give --tokenizer)'}`);
}
