// The `blip2` subcommands about datasets: `data synth` (the synthetic caption dataset) and `data index`.
import { InvalidArgumentError, type Command } from 'commander';
import { existsSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { UsageError } from '../common';
import { buildIndex, writeIndex, writeSynthDataset } from '../dataloader';

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

/** Subcommands about datasets: `data synth`, `data index`. */
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
      'Scan DIR for datasets (folders of WebDataset *.tar shards, *.jsonl / *.csv manifests, COCO captions_*.json) ' +
        'and write a shard index with sample counts and byte sizes, so a job can plan without reading images.',
    )
    .argument('<dir>', 'dataset root')
    .option('--out <file>', 'index file to write (default DIR/index.json)')
    .option('--coco-images <dir>', 'image folder for COCO annotation files (default: the folder named after the split beside the file)')
    .action(async (dir: string, o: { out?: string; cocoImages?: string }) => {
      if (!existsSync(dir)) throw new UsageError(`${dir}: no such folder`);
      if (!statSync(dir).isDirectory()) throw new UsageError(`${dir}: not a folder (give the dataset root)`);
      const index = await buildIndex(dir, { cocoImageRoot: o.cocoImages });
      const out = o.out ?? join(dir, 'index.json');
      // Paths in an index are relative to the index file's folder.
      const rebase = (p: string) => relative(dirname(resolve(out)), resolve(dir, p)) || '.';
      for (const d of index.datasets) {
        for (const s of d.shards) s.path = rebase(s.path);
        if (d.imageRoot) d.imageRoot = rebase(d.imageRoot);
      }
      writeIndex(out, index);
      for (const d of index.datasets) process.stdout.write(`${d.name} (${d.format}): ${d.samples} samples in ${d.shards.length} shards\n`);
      process.stdout.write(`wrote ${out}\n`);
    });
}
