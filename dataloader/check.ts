/**
 * `blip2 data check`: reads every sample of every dataset under the given paths the way a trainer would (the shard
 * reader, image decode and the train transform, the tokenizer) and reports per dataset what is usable, what is
 * skipped and why (with the first keys of each reason), samples lost to truncated tars, the caption length
 * distribution in tokens, the image size distribution, and duplicates (same image bytes, same key).
 */
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { descriptorId, type ShardDescriptor } from './descriptor';
import { scanDatasets, type DatasetEntry, type DatasetFormat, type DatasetIndex, type IndexNote } from './dataset-index';
import { DatasetError, SKIP_REASONS, type SkipReason } from './errors';
import { readShard } from './shard-reader';
import type { CaptionTokenizer } from './tokenizer';
import { transformImage } from './transforms';

export interface CheckOptions {
  /** Train-transform output side. Default 224. */
  imageSize?: number;
  /** Caption lengths in its tokens (untruncated); without one, in words. */
  tokenizer?: CaptionTokenizer;
  /** Tokens a caption keeps in training (longer ones are cut). Default 32. */
  maxTokens?: number;
  /** Keys listed per skip reason. Default 5. */
  examples?: number;
  /** Image folder for COCO and Karpathy files (as `data index --coco-images`). */
  cocoImageRoot?: string;
  /** Called after the index is scanned (with the total sample count) and after every sample. */
  onProgress?: (p: { done: number; total: number; dataset: string }) => void;
  /** Called for each note of the scan (image folders not found, truncated shards). */
  onNote?: (note: IndexNote) => void;
}

/** min, median, 95th percentile, max and mean of some numbers; null when there are none. */
export interface Distribution { min: number; p50: number; p95: number; max: number; mean: number }

export interface DatasetReport {
  /** The path given and the dataset's name in its index. */
  path: string;
  name: string;
  format: DatasetFormat;
  split?: string;
  /** Samples the index lists (readable ones; truncated tars count up to their break). */
  samples: number;
  usable: number;
  /** Skipped samples by reason, with the first keys of each. */
  skipped: Partial<Record<SkipReason, { count: number; keys: string[] }>>;
  /** Samples lost to truncated tars: at index time (the break) and while reading. */
  lostToTruncation: number;
  /** Caption lengths of usable samples, in tokens (`unit`); `overMax` captions are longer than training keeps. */
  captionLength: (Distribution & { unit: 'tokens' | 'words'; overMax: number }) | null;
  /** Source image sizes of usable samples, in pixels. */
  imageWidth: Distribution | null;
  imageHeight: Distribution | null;
  /** Usable samples whose image bytes equal an earlier sample's, and samples whose key repeats an earlier one. */
  duplicates: { sameImage: number; sameKey: number; examples: string[] };
}

export interface CheckReport {
  datasets: DatasetReport[];
  usable: number;
  skipped: number;
  lostToTruncation: number;
  notes: IndexNote[];
}

function distribution(xs: number[]): Distribution | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { min: s[0]!, p50: at(0.5), p95: at(0.95), max: s[s.length - 1]!, mean: Math.round((s.reduce((a, b) => a + b, 0) / s.length) * 10) / 10 };
}

/** A one-dataset index for a single file, read as `data index` would read it in its folder. */
async function indexFor(path: string, options: CheckOptions): Promise<{ root: string; index: DatasetIndex; notes: IndexNote[] }> {
  if (!existsSync(path)) throw new DatasetError(`${path}: no such file or folder`);
  if (statSync(path).isDirectory()) {
    const r = await scanDatasets(path, { cocoImageRoot: options.cocoImageRoot, onNote: options.onNote });
    return { root: resolve(path), ...r };
  }
  // A single file: scan its folder and keep the datasets whose shard is this file (or, for a tar, its folder).
  const root = dirname(resolve(path));
  const r = await scanDatasets(root, { cocoImageRoot: options.cocoImageRoot, onNote: options.onNote });
  const name = basename(path);
  const datasets = r.index.datasets
    .filter((d) => d.shards.some((s) => s.path === name))
    .map((d) => (d.format === 'webdataset' ? { ...d, shards: d.shards.filter((s) => s.path === name) } : d))
    .map((d) => ({ ...d, samples: d.shards.reduce((n, s) => n + s.samples, 0) }));
  if (!datasets.length) {
    throw new DatasetError(`${path}: not a dataset file (a WebDataset .tar, a .jsonl or .csv manifest, a JSON array of {image, caption}, or a COCO captions_*.json)`);
  }
  return { root, index: { version: 1, datasets }, notes: r.notes.filter((n) => resolve(n.path) === resolve(path)) };
}

/** Reads every sample of every dataset under `paths`; see the file's comment. */
export async function checkDatasets(paths: readonly string[], options: CheckOptions = {}): Promise<CheckReport> {
  const examples = options.examples ?? 5;
  const maxTokens = options.maxTokens ?? 32;
  const found: Array<{ path: string; root: string; d: DatasetEntry }> = [];
  const notes: IndexNote[] = [];
  for (const p of paths) {
    const r = await indexFor(p, options);
    notes.push(...r.notes);
    for (const d of r.index.datasets) found.push({ path: p, root: r.root, d });
  }
  const total = found.reduce((n, f) => n + f.d.samples, 0);
  let done = 0;
  options.onProgress?.({ done, total, dataset: found[0]?.d.name ?? '' });
  const reports: DatasetReport[] = [];
  for (const { path, root, d } of found) {
    const report: DatasetReport = {
      path, name: d.name, format: d.format, ...(d.split ? { split: d.split } : {}), samples: d.samples, usable: 0, skipped: {},
      lostToTruncation: d.shards.reduce((n, s) => n + (s.lost ?? 0), 0), captionLength: null, imageWidth: null, imageHeight: null,
      duplicates: { sameImage: 0, sameKey: 0, examples: [] },
    };
    const lengths: number[] = [], widths: number[] = [], heights: number[] = [];
    const hashes = new Map<string, string>();
    const keys = new Set<string>();
    const skip = (reason: SkipReason, key: string, n = 1) => {
      const s = (report.skipped[reason] ??= { count: 0, keys: [] });
      s.count += n;
      if (s.keys.length < examples) s.keys.push(key);
    };
    for (const shard of d.shards) {
      if (shard.samples === 0) continue;
      const r = { v: 1 as const, epoch: 0, seed: 0, dataset: d.name, format: d.format, shard: shard.path, start: 0, end: shard.samples, ...(d.imageRoot ? { imageRoot: d.imageRoot } : {}) };
      const desc: ShardDescriptor = { ...r, id: descriptorId(r), order: 0 };
      for await (const item of readShard(desc, { dataRoot: root })) {
        const where = d.shards.length > 1 ? `${shard.path}:${item.key}` : item.key;
        if (keys.has(where)) {
          report.duplicates.sameKey++;
          if (report.duplicates.examples.length < examples) report.duplicates.examples.push(`key ${where} repeats`);
        }
        keys.add(where);
        if (item.kind === 'skip') {
          skip(item.error.reason, where, item.error.samples);
          if (item.error.reason === 'truncated_tar') report.lostToTruncation += item.error.samples;
        } else {
          try {
            const t = await transformImage(item.image, { mode: 'train', imageSize: options.imageSize ?? 224 }, [0, 0, item.sampleId]);
            widths.push(t.width);
            heights.push(t.height);
            report.usable++;
            const length = options.tokenizer ? options.tokenizer.encode(item.caption).length : item.caption.split(/\s+/).filter(Boolean).length;
            lengths.push(length);
            const hash = createHash('sha1').update(item.image).digest('hex');
            const first = hashes.get(hash);
            if (first !== undefined) {
              report.duplicates.sameImage++;
              if (report.duplicates.examples.length < examples) report.duplicates.examples.push(`image of ${where} = image of ${first}`);
            } else hashes.set(hash, where);
          } catch {
            skip('corrupt_image', where);
          }
        }
        done += item.kind === 'skip' ? Math.min(item.error.samples, shard.samples) : 1;
        options.onProgress?.({ done: Math.min(done, total), total, dataset: d.name });
      }
    }
    const dist = distribution(lengths);
    report.captionLength = dist && { ...dist, unit: options.tokenizer ? 'tokens' : 'words', overMax: options.tokenizer ? lengths.filter((n) => n > maxTokens).length : 0 };
    report.imageWidth = distribution(widths);
    report.imageHeight = distribution(heights);
    // Reasons in their documented order.
    report.skipped = Object.fromEntries(SKIP_REASONS.filter((k) => report.skipped[k]).map((k) => [k, report.skipped[k]!]));
    reports.push(report);
  }
  const sumOf = (f: (r: DatasetReport) => number) => reports.reduce((n, r) => n + f(r), 0);
  return {
    datasets: reports,
    usable: sumOf((r) => r.usable),
    skipped: sumOf((r) => Object.values(r.skipped).reduce((n, s) => n + s.count, 0)),
    lostToTruncation: sumOf((r) => r.lostToTruncation),
    notes,
  };
}
