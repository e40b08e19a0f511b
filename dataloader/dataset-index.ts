/**
 * The shard index (`index.json`): which datasets exist, their format, shards, sample counts and byte sizes, so a
 * job can plan an epoch without opening any image. Paths are relative to the index file's folder.
 */
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { DatasetError } from './errors';
import { countTarSamples } from './formats/webdataset';
import { countManifestSamples } from './formats/manifest';
import { countCocoSamples } from './formats/coco';

export type DatasetFormat = 'webdataset' | 'jsonl' | 'csv' | 'coco';
export const DATASET_FORMATS: readonly DatasetFormat[] = ['webdataset', 'jsonl', 'csv', 'coco'];

export interface ShardEntry {
  /** Shard file relative to the index folder: a tar, a manifest, or a COCO annotation file. */
  path: string;
  samples: number;
  bytes: number;
}

export interface DatasetEntry {
  /** Unique name; the first part of every sample id. Letters, digits, `-`, `_`, `.` only. */
  name: string;
  format: DatasetFormat;
  /** `train`, `val`, ... when known. */
  split?: string;
  /** Folder that image paths of manifests and COCO files are relative to (relative to the index folder). */
  imageRoot?: string;
  samples: number;
  shards: ShardEntry[];
}

export interface DatasetIndex {
  version: 1;
  datasets: DatasetEntry[];
}

const NAME_RULE = /^[A-Za-z0-9._-]+$/;

/** Checks an index object and names the first rule it breaks. */
export function validateIndex(value: unknown, source = 'index'): DatasetIndex {
  const fail = (msg: string): never => { throw new DatasetError(`${source}: ${msg}`); };
  if (typeof value !== 'object' || value === null) fail('not a JSON object');
  const v = value as Partial<DatasetIndex>;
  if (v.version !== 1) fail(`version must be 1, got ${JSON.stringify(v.version)}`);
  if (!Array.isArray(v.datasets)) fail('datasets must be an array');
  const names = new Set<string>();
  for (const d of v.datasets!) {
    if (typeof d?.name !== 'string' || !NAME_RULE.test(d.name)) fail(`dataset name ${JSON.stringify(d?.name)} must match ${NAME_RULE}`);
    if (names.has(d.name)) fail(`dataset name ${d.name} appears twice`);
    names.add(d.name);
    if (!DATASET_FORMATS.includes(d.format)) fail(`dataset ${d.name}: format ${JSON.stringify(d.format)} is not one of ${DATASET_FORMATS.join(', ')}`);
    if (!Array.isArray(d.shards)) fail(`dataset ${d.name}: shards must be an array`);
    for (const s of d.shards) {
      if (typeof s?.path !== 'string' || !Number.isInteger(s.samples) || s.samples < 0) {
        fail(`dataset ${d.name}: shard ${JSON.stringify(s)} needs a path and a non-negative integer sample count`);
      }
    }
  }
  return v as DatasetIndex;
}

export function loadIndex(path: string): DatasetIndex {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new DatasetError(`cannot read index ${path}: ${(e as Error).message}`);
  }
  return validateIndex(raw, path);
}

export function writeIndex(path: string, index: DatasetIndex): void {
  writeFileSync(path, JSON.stringify(validateIndex(index), null, 2) + '\n');
}

function walk(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

function datasetName(relPath: string): string {
  const n = relPath.split(sep).join('-').replace(/[^A-Za-z0-9._-]/g, '_');
  return n === '' || n === '.' ? 'root' : n;
}

/**
 * Scans `root` for datasets: every folder holding `*.tar` files is one WebDataset dataset (name = the folder's
 * path, `/` as `-`); every `*.jsonl` / `*.csv` file is one manifest dataset (name = the file's path); every `captions_<split>.json` is a COCO dataset
 * whose images are in the folder `<split>` beside it (or `cocoImageRoot`).
 */
export async function buildIndex(root: string, options: { cocoImageRoot?: string } = {}): Promise<DatasetIndex> {
  root = resolve(root);
  const files = walk(root);
  const datasets: DatasetEntry[] = [];
  const tarsByFolder = new Map<string, string[]>();
  for (const f of files) {
    if (f.endsWith('.tar')) {
      const d = dirname(f);
      tarsByFolder.set(d, [...(tarsByFolder.get(d) ?? []), f]);
    }
  }
  for (const [folder, tars] of tarsByFolder) {
    const shards: ShardEntry[] = [];
    for (const t of tars) {
      let samples: number;
      try {
        samples = await countTarSamples(t);
      } catch (e) {
        throw new DatasetError(`cannot index ${t}: ${(e as Error).message} (a truncated or corrupt tar; repair or remove it)`);
      }
      shards.push({ path: relative(root, t), samples, bytes: statSync(t).size });
    }
    const rel = relative(root, folder);
    datasets.push({ name: datasetName(rel), format: 'webdataset', split: basename(folder), samples: sum(shards), shards });
  }
  for (const f of files) {
    const rel = relative(root, f);
    if (f.endsWith('.jsonl') || f.endsWith('.csv')) {
      const format = f.endsWith('.jsonl') ? 'jsonl' : 'csv';
      const samples = countManifestSamples(f, format);
      datasets.push({
        name: datasetName(rel), format, imageRoot: relative(root, dirname(f)) || '.',
        samples, shards: [{ path: rel, samples, bytes: statSync(f).size }],
      });
    }
    const coco = /^captions_(.+)\.json$/.exec(basename(f));
    if (coco) {
      const split = coco[1]!;
      const samples = countCocoSamples(f);
      const imageRoot = options.cocoImageRoot ? relative(root, resolve(options.cocoImageRoot)) : relative(root, join(dirname(f), split));
      datasets.push({
        name: datasetName(rel), format: 'coco', split, imageRoot: imageRoot || '.',
        samples, shards: [{ path: rel, samples, bytes: statSync(f).size }],
      });
    }
  }
  return { version: 1, datasets };
}

function sum(shards: ShardEntry[]): number {
  return shards.reduce((a, s) => a + s.samples, 0);
}
