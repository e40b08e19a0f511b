/**
 * A dataset split read whole for evaluation: one record per image with every reference caption of that image and
 * its question/answer pairs, in index order (`blip2 eval --checkpoint`, and the job's evaluation).
 *
 * - WebDataset: the sample's json `captions` (all references; the synthetic dataset writes two) and `qa`, else its
 *   `txt` / json `caption`; the image found as training finds it (`pickTarImage`).
 * - JSONL / CSV / JSON manifests: a row's captions (every `caption`/`captions` value), the image under the image root.
 * - COCO captions files: the annotations grouped by image (COCO has five per image).
 * Samples without a caption or image are left out and counted (`skipped`), as training skips them.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { loadIndex, trainingDatasets, type DatasetEntry, type DatasetIndex } from './dataset-index';
import { DatasetError } from './errors';
import { readCoco } from './formats/coco';
import { readManifest } from './formats/manifest';
import { readTarSamples, TarBreakError } from './formats/webdataset';
import { pickTarImage } from './shard-reader';

/** One image of an evaluation split. */
export interface EvalSample {
  /** `<dataset>/<key>`: unique within the split. */
  id: string;
  /** Encoded image bytes (absent when read with `images: false`). */
  image?: Uint8Array;
  /** Every reference caption, as written (no cleaning). */
  captions: string[];
  /** Question/answer pairs (the synthetic dataset's json `qa`); empty when the data has none. */
  qa: Array<{ question: string; answer: string }>;
}

export interface ReadSplitOptions {
  /** At most this many images (the first ones, in index order); default all. */
  limit?: number;
  /** Read the image bytes. Default true (false: captions and questions only, for baselines). */
  images?: boolean;
}

export interface EvalSplit {
  /** The split's name (`val`), or `train` for the training datasets. */
  split: string;
  datasets: string[];
  samples: EvalSample[];
  /** Samples without a usable caption or image, left out. */
  skipped: number;
}

/** The index of a data folder (`DIR/index.json`) or an index file. */
export function loadDataIndex(data: string): { index: DatasetIndex; root: string } {
  const isDir = existsSync(data) && statSync(data).isDirectory();
  const path = isDir ? join(data, 'index.json') : data;
  if (!existsSync(path)) throw new DatasetError(`${data}: no index.json (make one with \`blip2 data index ${data}\`, or \`blip2 data synth\`)`);
  return { index: loadIndex(path), root: isDir ? data : join(path, '..') };
}

/** Datasets of a split: those whose `split` (or name) is `split`; `train` also takes those without a split. */
export function splitDatasets(index: DatasetIndex, split: string): DatasetEntry[] {
  const named = index.datasets.filter((d) => d.split === split || (d.split === undefined && d.name === split));
  if (named.length || split !== 'train') return named;
  return trainingDatasets(index);
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v : v === undefined ? [] : [v]).filter((c): c is string => typeof c === 'string' && c.trim() !== '');

function qaOf(v: unknown): EvalSample['qa'] {
  if (!Array.isArray(v)) return [];
  return v.filter((x): x is { question: string; answer: string } =>
    typeof x === 'object' && x !== null && typeof (x as { question?: unknown }).question === 'string' && typeof (x as { answer?: unknown }).answer === 'string');
}

/** Reads the images of `split` from the data folder (or index file) `data`. */
export async function readEvalSplit(data: string, split: string, o: ReadSplitOptions = {}): Promise<EvalSplit> {
  const { index, root } = loadDataIndex(data);
  const datasets = splitDatasets(index, split);
  if (datasets.length === 0) {
    const known = [...new Set(index.datasets.map((d) => d.split ?? d.name))].join(', ');
    throw new DatasetError(`${data}: no dataset of split "${split}" (the index has: ${known || 'no datasets'})`);
  }
  const limit = o.limit ?? Infinity;
  const withImages = o.images ?? true;
  const samples: EvalSample[] = [];
  let skipped = 0;
  const add = (s: EvalSample | undefined) => {
    if (!s || s.captions.length === 0 || (withImages && !s.image)) skipped++;
    else samples.push(s);
  };
  for (const d of datasets) {
    const imageRoot = join(root, d.imageRoot ?? '.');
    const readImage = (rel: string): Uint8Array | undefined => {
      if (!withImages) return new Uint8Array(0);
      try {
        return readFileSync(join(imageRoot, rel));
      } catch {
        return undefined;
      }
    };
    for (const shard of d.shards) {
      if (samples.length >= limit) break;
      const path = join(root, shard.path);
      if (!existsSync(path)) throw new DatasetError(`${path}: shard of dataset ${d.name} does not exist`);
      if (d.format === 'webdataset') {
        try {
          for await (const s of readTarSamples(path)) {
            if (samples.length >= limit) break;
            let meta: { caption?: unknown; captions?: unknown; qa?: unknown } = {};
            const json = s.files.get('json');
            if (json) {
              try { meta = JSON.parse(json.toString('utf8')) as typeof meta; } catch { meta = {}; }
            }
            const captions = strings(meta.captions).length ? strings(meta.captions) : strings([s.files.get('txt')?.toString('utf8'), meta.caption].filter((x) => x !== undefined));
            const image = withImages ? pickTarImage(s.files) : new Uint8Array(0);
            add({ id: `${d.name}/${s.key}`, image: typeof image === 'string' ? undefined : image, captions: [...new Set(captions)], qa: qaOf(meta.qa) });
          }
        } catch (e) {
          if (!(e instanceof TarBreakError)) throw e;
          skipped += Math.max(0, shard.samples - e.completeSamples);
        }
      } else if (d.format === 'coco') {
        const byImage = new Map<string, string[]>();
        for (const a of readCoco(path)) {
          if (a.image === undefined || typeof a.caption !== 'string') { skipped++; continue; }
          if (!byImage.has(a.image)) byImage.set(a.image, []);
          byImage.get(a.image)!.push(a.caption);
        }
        for (const [file, captions] of byImage) {
          if (samples.length >= limit) break;
          add({ id: `${d.name}/${file}`, image: readImage(file), captions: strings(captions), qa: [] });
        }
      } else {
        for (const row of readManifest(path, d.format)) {
          if (samples.length >= limit) break;
          if ('error' in row) { skipped++; continue; }
          add({ id: `${d.name}/${row.key}`, image: readImage(row.image), captions: strings(row.captions), qa: [] });
        }
      }
    }
  }
  if (!withImages) for (const s of samples) delete s.image;
  return { split, datasets: datasets.map((d) => d.name), samples, skipped };
}
