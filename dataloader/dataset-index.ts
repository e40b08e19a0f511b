/**
 * The shard index (`index.json`): which datasets exist, their format, shards, sample counts and byte sizes, so a
 * job can plan an epoch without opening any image. Paths are relative to the index file's folder.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { DatasetError, oneLine } from './errors';
import { countTarSamples, recordedSampleCount } from './formats/webdataset';
import { readManifest, type ManifestFormat } from './formats/manifest';
import { readCoco } from './formats/coco';

/** `json`: a JSON array of {image, caption} objects (LAVIS's Karpathy split files). */
export type DatasetFormat = 'webdataset' | 'jsonl' | 'csv' | 'json' | 'coco';
export const DATASET_FORMATS: readonly DatasetFormat[] = ['webdataset', 'jsonl', 'csv', 'json', 'coco'];

export interface ShardEntry {
  /** Shard file relative to the index folder: a tar, a manifest, or a COCO annotation file. */
  path: string;
  /** Samples that can be read (for a truncated tar: those before the break). */
  samples: number;
  bytes: number;
  /** Samples lost to a truncated tar (at least the one at the break; more when img2dataset's stats say so). */
  lost?: number;
  /** Why samples were lost: where the tar breaks off. */
  problem?: string;
}

export interface DatasetEntry {
  /** Unique name; the first part of every sample id. Letters, digits, `-`, `_`, `.` only. */
  name: string;
  format: DatasetFormat;
  /** `train`, `val`, ... when known. Datasets of split `val` or `test` are left out of training unless named. */
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

/** Something `buildIndex` wants the user to know: an image folder not found, a truncated shard, a file ignored. */
export interface IndexNote {
  level: 'warn' | 'info';
  /** The file or folder it is about. */
  path: string;
  message: string;
}

export interface BuildIndexOptions {
  /** Image folder for COCO and Karpathy annotation files; default: found beside the file (see `buildIndex`). */
  cocoImageRoot?: string;
  /** Notes as they are found (also returned by `scanDatasets`). */
  onNote?: (note: IndexNote) => void;
}

/** The first bytes of a file, as text (to tell a JSON array from an object without parsing a large file). */
function firstChars(path: string, n = 64): string {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(n);
    const got = readSync(fd, b, 0, n, 0);
    return b.subarray(0, got).toString('utf8').replace(/^\uFEFF/, '').trimStart();
  } finally {
    closeSync(fd);
  }
}

/** The split a file name says (`captions_val2017.json`, `coco_karpathy_test.json`, `train.jsonl`), if any. */
function splitOf(name: string): string | undefined {
  const m = /(?:^|[_.-])(train|val|valid|validation|test|dev)(?:\d{4})?(?=[_.-]|$)/i.exec(name);
  if (!m) return undefined;
  const s = m[1]!.toLowerCase();
  return s === 'valid' || s === 'validation' || s === 'dev' ? 'val' : s;
}

/**
 * The first of `candidates` (absolute folders) under which one of `images` (relative paths of a file's first
 * samples) exists; undefined when none has any.
 */
function findImageRoot(candidates: string[], images: string[]): string | undefined {
  const probe = images.slice(0, 8);
  return [...new Set(candidates)].find((dir) => existsSync(dir) && probe.some((p) => existsSync(join(dir, p))));
}

/**
 * Scans `root` for datasets and says what it found on the way:
 * - every folder holding `*.tar` files is one WebDataset dataset (name = the folder's path, `/` as `-`; split =
 *   the folder's name); a truncated shard is indexed up to its break, with the samples lost recorded;
 *   img2dataset's `*.parquet` and `*_stats.json` beside the shards are not datasets;
 * - every `*.jsonl` / `*.csv` file is one manifest dataset (images relative to the file's folder);
 * - every `*.json` file holding a JSON array (LAVIS's `coco_karpathy_{train,val,test}.json`) is one `json` dataset;
 *   its images are looked for beside it, in `images/` beside it, and one and two folders up (LAVIS keeps them in
 *   `coco/images/`, the annotations in `coco/annotations/`);
 * - every `captions_<split>.json` holding an object is a COCO dataset; its image folder is the first of
 *   `<split>/` beside the file, `../<split>/`, `../images/<split>/`, `images/<split>/`, the file's own folder
 *   (the 2014 and 2017 layouts) that holds its first images, or `cocoImageRoot`.
 * The split of a manifest or annotation file comes from its name (`train`, `val`, `test`).
 */
export async function scanDatasets(root: string, options: BuildIndexOptions = {}): Promise<{ index: DatasetIndex; notes: IndexNote[] }> {
  root = resolve(root);
  const notes: IndexNote[] = [];
  const note = (level: IndexNote['level'], path: string, message: string) => {
    const n = { level, path, message: oneLine(message) };
    notes.push(n);
    options.onNote?.(n);
  };
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
      const count = await countTarSamples(t);
      const shard: ShardEntry = { path: relative(root, t), samples: count.samples, bytes: statSync(t).size };
      if (count.break) {
        const recorded = recordedSampleCount(t);
        const atBreak = count.break.partialKey !== undefined ? 1 : 0;
        shard.lost = Math.max(atBreak, recorded !== undefined ? recorded - count.samples : 0, 1);
        shard.problem = count.break.detail;
        note('warn', t, `truncated: ${count.samples} sample(s) indexed, ${recorded !== undefined ? `${shard.lost} lost (img2dataset recorded ${recorded})` : `${shard.lost} or more lost`} (${count.break.detail})`);
      }
      shards.push(shard);
    }
    const rel = relative(root, folder);
    datasets.push({ name: datasetName(rel), format: 'webdataset', split: basename(folder), samples: sum(shards), shards });
  }
  const rootOf = (dir: string) => relative(root, dir) || '.';
  const imageRootOption = options.cocoImageRoot ? resolve(options.cocoImageRoot) : undefined;
  for (const f of files) {
    const rel = relative(root, f);
    const name = basename(f);
    const entry = (format: DatasetFormat, samples: number, imageRoot: string, split: string | undefined): DatasetEntry => ({
      name: datasetName(rel), format, ...(split ? { split } : {}), imageRoot,
      samples, shards: [{ path: rel, samples, bytes: statSync(f).size }],
    });
    if (f.endsWith('.jsonl') || f.endsWith('.csv')) {
      const format: ManifestFormat = f.endsWith('.jsonl') ? 'jsonl' : 'csv';
      const rows = readManifest(f, format);
      const images = rows.flatMap((r) => ('image' in r ? [r.image] : []));
      if (images.length && !findImageRoot([dirname(f)], images)) {
        note('warn', f, `none of its first images (${images[0]}, …) is under ${dirname(f)}: image paths in a manifest are relative to its folder`);
      }
      datasets.push(entry(format, rows.length, rootOf(dirname(f)), splitOf(name)));
      continue;
    }
    if (!name.endsWith('.json') || name === 'index.json' || name.startsWith('tokenizer') || name.endsWith('_stats.json')) continue;
    if (tarsByFolder.has(dirname(f)) && !name.startsWith('captions_')) continue;
    const head = firstChars(f);
    const dir = dirname(f);
    if (head.startsWith('[')) {
      const rows = readManifest(f, 'json');
      const images = rows.flatMap((r) => ('image' in r ? [r.image] : []));
      if (rows.length && images.length === 0) {
        note('info', f, 'ignored: a JSON array without {"image", "caption"} entries');
        continue;
      }
      const candidates = [dir, join(dir, 'images'), join(dir, '..'), join(dir, '..', 'images'), join(dir, '..', '..'), join(dir, '..', '..', 'images')];
      const found = imageRootOption ?? findImageRoot(candidates, images);
      if (!found) note('warn', f, `images not found: none of ${images[0]}, … is under ${candidates.map((c) => relative(root, c) || '.').join(', ')}; give the image folder with --coco-images`);
      datasets.push(entry('json', rows.length, rootOf(found ?? dir), splitOf(name)));
      continue;
    }
    const coco = /^captions_(.+)\.json$/.exec(name);
    if (!coco) continue;
    const split = coco[1]!;
    const anns = readCoco(f);
    const images = anns.flatMap((a) => (typeof a.image === 'string' ? [a.image] : []));
    const candidates = [join(dir, split), join(dir, '..', split), join(dir, '..', 'images', split), join(dir, 'images', split), dir];
    const found = imageRootOption ?? findImageRoot(candidates, images);
    if (!found && images.length) {
      note('warn', f, `image folder not found: none of ${images[0]}, … is in ${candidates.map((c) => relative(root, c) || '.').join(', ')}; give it with --coco-images`);
    }
    datasets.push(entry('coco', anns.length, rootOf(found ?? join(dir, split)), splitOf(name) ?? split));
  }
  return { index: { version: 1, datasets }, notes };
}

/** `scanDatasets` without the notes (they still go to `options.onNote`). */
export async function buildIndex(root: string, options: BuildIndexOptions = {}): Promise<DatasetIndex> {
  return (await scanDatasets(root, options)).index;
}

/** Names of the datasets a job trains on: `datasets` when given, else every one whose split is not `val`/`test`. */
export function trainingDatasets(index: DatasetIndex, datasets?: readonly string[]): DatasetEntry[] {
  if (datasets?.length) return index.datasets.filter((d) => datasets.includes(d.name));
  return index.datasets.filter((d) => d.split !== 'val' && d.split !== 'test');
}

const count = (n: number) => n.toLocaleString('en-US');

/**
 * The one summary line `data index` and `launch` print for an index: samples for training (and in how many
 * datasets), datasets left out of training and why, samples lost to truncated shards (by shard).
 */
export function describeIndex(index: DatasetIndex, datasets?: readonly string[]): string {
  const train = trainingDatasets(index, datasets);
  const out = index.datasets.filter((d) => !train.includes(d));
  const parts = [`${count(train.reduce((n, d) => n + d.samples, 0))} samples for training in ${train.length} dataset(s)`];
  if (out.length) {
    const why = datasets?.length ? 'not in data.datasets' : 'split val/test, kept for evaluation; name them in data.datasets to train on them';
    parts.push(`left out of training (${why}): ${out.map((d) => `${d.name} (${count(d.samples)})`).join(', ')}`);
  }
  const lost = index.datasets.flatMap((d) => d.shards.filter((s) => s.lost).map((s) => ({ d, s })));
  if (lost.length) {
    const total = lost.reduce((n, x) => n + x.s.lost!, 0);
    const shown = lost.slice(0, 3).map((x) => `${x.s.path}: ${count(x.s.lost!)}`).join(', ');
    parts.push(`${count(total)} lost to ${lost.length} truncated shard(s) (${shown}${lost.length > 3 ? ', …' : ''})`);
  }
  return `data: ${parts.join('; ')}`;
}

function sum(shards: ShardEntry[]): number {
  return shards.reduce((a, s) => a + s.samples, 0);
}

/**
 * Checks that every shard file the job would read (the datasets `datasets` names, or the training datasets) exists
 * where a trainer looks for it: `<dataRoot>/<shard path>`; throws DatasetError naming the first missing ones. Run
 * before a job starts, so that a descriptor no trainer can read fails it at once instead of leaving it waiting.
 */
export function checkShardFiles(index: DatasetIndex, dataRoot: string, indexPath: string, datasets?: readonly string[]): void {
  const missing = trainingDatasets(index, datasets).flatMap((d) => d.shards.map((s) => s.path).filter((p) => !existsSync(resolve(dataRoot, p))));
  if (missing.length) {
    throw new DatasetError(
      `${indexPath} names ${missing.length} shard file(s) that do not exist: ${missing.slice(0, 3).map((p) => `${p} (${resolve(dataRoot, p)})`).join(', ')}` +
        `${missing.length > 3 ? ', …' : ''}; paths in an index are relative to its folder (rewrite it with \`blip2 data index\`)`,
    );
  }
}
