/**
 * Reads the samples of one shard descriptor, from a cursor, in the shard's order: encoded image bytes and a
 * cleaned caption, or a skip with its reason. Bad samples never stop the shard (except a truncated tar, where
 * nothing after the break can be read).
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { preCaption } from './caption';
import { sampleId, type ShardDescriptor } from './descriptor';
import { BadSampleError, DatasetError, type SkipReason } from './errors';
import { readTarSamples, TarBreakError } from './formats/webdataset';
import { IMAGE_EXTENSIONS, sharpDecodes, sniffImageFormat } from './formats/image-type';
import { readManifest } from './formats/manifest';
import { readCoco } from './formats/coco';
import { seededRandom } from './rng';

export interface ReadShardOptions {
  /** Folder the descriptor's paths are relative to (the index folder). */
  dataRoot: string;
  /** First ordinal to read (a cursor); default the descriptor's start. */
  fromOrdinal?: number;
  /** A raw caption longer than this many characters is skipped as `caption_too_long`. Default 2,000. */
  maxCaptionChars?: number;
  /** `pre_caption` word limit. Default 50. */
  maxWords?: number;
}

export interface ShardSample {
  kind: 'sample';
  ordinal: number;
  key: string;
  sampleId: string;
  image: Uint8Array;
  /** After `pre_caption`. */
  caption: string;
}

export interface ShardSkip {
  kind: 'skip';
  ordinal: number;
  key: string;
  sampleId: string;
  error: BadSampleError;
}

export type ShardItem = ShardSample | ShardSkip;

export async function* readShard(desc: ShardDescriptor, options: ReadShardOptions): AsyncGenerator<ShardItem> {
  const from = Math.max(desc.start, options.fromOrdinal ?? desc.start);
  const maxChars = options.maxCaptionChars ?? 2000;
  const maxWords = options.maxWords ?? 50;
  const shardPath = join(options.dataRoot, desc.shard);
  if (!existsSync(shardPath)) throw new DatasetError(`shard file ${shardPath} of descriptor ${desc.id} does not exist`);
  const skip = (ordinal: number, key: string, reason: SkipReason, detail: string): ShardSkip => ({
    kind: 'skip', ordinal, key, sampleId: sampleId(desc, key), error: new BadSampleError(reason, desc.shard, key, detail),
  });
  // Picks and cleans a caption; returns a skip when there is none or it is too long.
  const caption = (ordinal: number, key: string, candidates: unknown[]): string | ShardSkip => {
    const texts = candidates.filter((c): c is string => typeof c === 'string' && c.trim() !== '');
    if (!texts.length) return skip(ordinal, key, 'missing_caption', 'no caption text');
    const pick = texts.length === 1 ? texts[0]! : texts[Math.floor(seededRandom('caption', desc.seed, desc.epoch, sampleId(desc, key))() * texts.length)]!;
    if (pick.length > maxChars) return skip(ordinal, key, 'caption_too_long', `caption has ${pick.length} characters, the limit is ${maxChars}`);
    const clean = preCaption(pick, maxWords);
    if (!clean) return skip(ordinal, key, 'missing_caption', `caption ${JSON.stringify(pick.slice(0, 80))} is empty after pre_caption`);
    return clean;
  };
  const imageRoot = join(options.dataRoot, desc.imageRoot ?? '.');
  const loadImage = async (ordinal: number, key: string, rel: string): Promise<Uint8Array | ShardSkip> => {
    try {
      const bytes = await readFile(join(imageRoot, rel));
      const format = sniffImageFormat(bytes);
      if (format && !sharpDecodes(format)) return skip(ordinal, key, 'unsupported_image', `${join(imageRoot, rel)} holds ${format.toUpperCase()} data, which sharp (libvips) does not decode`);
      return bytes;
    } catch (e) {
      return skip(ordinal, key, 'missing_image', `cannot read image ${join(imageRoot, rel)}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };

  if (desc.format === 'webdataset') {
    let next = from;
    try {
      for await (const s of readTarSamples(shardPath, (o) => o >= from && o < desc.end)) {
        if (s.ordinal >= desc.end) break;
        if (s.ordinal < from) continue;
        next = s.ordinal + 1;
        let meta: { caption?: unknown } = {};
        const json = s.files.get('json');
        if (json) {
          try { meta = JSON.parse(json.toString('utf8')) as { caption?: unknown }; } catch { meta = {}; }
        }
        const txt = s.files.get('txt');
        const c = caption(s.ordinal, s.key, [txt?.toString('utf8'), meta.caption]);
        if (typeof c !== 'string') { yield c; continue; }
        const image = pickTarImage(s.files);
        if (typeof image === 'string') {
          const reason = image.startsWith('unsupported:') ? 'unsupported_image' : image.startsWith('several:') ? 'multiple_images' : 'missing_image';
          yield skip(s.ordinal, s.key, reason, image.slice(image.indexOf(':') + 1));
          continue;
        }
        yield { kind: 'sample', ordinal: s.ordinal, key: s.key, sampleId: sampleId(desc, s.key), image, caption: c };
      }
    } catch (e) {
      if (!(e instanceof TarBreakError)) throw e;
      // Samples of the range at or after the break cannot be read: one skip stands for all of them. When the index
      // was written after the cut, the range ends before the break and nothing is lost here.
      if (next < desc.end) {
        const key = e.partialKey ?? `#${next}`;
        yield {
          kind: 'skip', ordinal: next, key, sampleId: sampleId(desc, key),
          error: new BadSampleError('truncated_tar', desc.shard, key, `${e.detail}; samples ${next}..${desc.end - 1} of the range (${desc.end - next}) cannot be read`, desc.end - next),
        };
      }
    }
    return;
  }

  if (desc.format === 'jsonl' || desc.format === 'csv' || desc.format === 'json') {
    let rows;
    rows = readManifest(shardPath, desc.format);
    for (const row of rows.slice(from, desc.end)) {
      if ('error' in row) { yield skip(row.ordinal, row.key, 'bad_manifest_line', row.error); continue; }
      const c = caption(row.ordinal, row.key, row.captions);
      if (typeof c !== 'string') { yield c; continue; }
      const img = await loadImage(row.ordinal, row.key, row.image);
      if (!(img instanceof Uint8Array)) { yield img; continue; }
      yield { kind: 'sample', ordinal: row.ordinal, key: row.key, sampleId: sampleId(desc, row.key), image: img, caption: c };
    }
    return;
  }

  let anns;
  anns = readCoco(shardPath);
  for (const a of anns.slice(from, desc.end)) {
    const c = caption(a.ordinal, a.key, [a.caption]);
    if (typeof c !== 'string') { yield c; continue; }
    if (a.image === undefined) { yield skip(a.ordinal, a.key, 'missing_image', 'annotation names an image_id that is not in "images"'); continue; }
    const img = await loadImage(a.ordinal, a.key, a.image);
    if (!(img instanceof Uint8Array)) { yield img; continue; }
    yield { kind: 'sample', ordinal: a.ordinal, key: a.key, sampleId: sampleId(desc, a.key), image: img, caption: c };
  }
}

const TEXT_EXTENSIONS = new Set(['txt', 'json', 'cls', 'caption', 'text', 'md', 'csv', 'tsv', 'parquet', 'npy']);

/**
 * The one image of a WebDataset sample, found by content (any format sharp decodes, whatever its extension) or by an
 * image extension (a corrupt image is still the sample's image). A string when there is none
 * (`none:…`), several (`several:…`) or one sharp cannot decode (`unsupported:…`).
 */
export function pickTarImage(files: Map<string, Buffer>): Uint8Array | string {
  const found: Array<{ ext: string; body: Buffer; format: ReturnType<typeof sniffImageFormat> }> = [];
  for (const [ext, body] of files) {
    const last = ext.slice(ext.lastIndexOf('.') + 1);
    if (TEXT_EXTENSIONS.has(last)) continue;
    const format = sniffImageFormat(body);
    if (format || IMAGE_EXTENSIONS.includes(last)) found.push({ ext, body, format });
  }
  if (found.length === 0) return `none:sample has no image file (has ${[...files.keys()].map((e) => `.${e}`).join(', ') || 'no files'})`;
  if (found.length > 1) return `several:sample has ${found.length} images (${found.map((f) => `.${f.ext}`).join(', ')}); a sample must have one`;
  const f = found[0]!;
  if (f.format && !sharpDecodes(f.format)) return `unsupported:.${f.ext} holds ${f.format.toUpperCase()} data, which sharp (libvips) does not decode`;
  return f.body;
}
