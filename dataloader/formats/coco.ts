/**
 * COCO captions annotation files (`captions_train2017.json`): `images` [{id, file_name}] and `annotations`
 * [{id, image_id, caption}]. One sample per annotation, in file order, as LAVIS's COCO caption dataset; the key is
 * the annotation id. Image files are `<imageRoot>/<file_name>`.
 */
import { readFileSync } from 'node:fs';
import { DatasetError, oneLine } from '../errors';

export interface CocoSample {
  ordinal: number;
  key: string;
  /** Undefined when the annotation's image_id is not among `images`. */
  image: string | undefined;
  caption: unknown;
}

interface CocoFile {
  images?: Array<{ id: number; file_name: string }>;
  annotations?: Array<{ id: number; image_id: number; caption: unknown }>;
}

const cache = new Map<string, CocoSample[]>();

/** The annotations of a COCO captions file; a file that cannot be used throws DatasetError naming it. */
export function readCoco(path: string): CocoSample[] {
  let samples = cache.get(path);
  if (!samples) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new DatasetError(`${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    let f: CocoFile;
    try {
      f = JSON.parse(text) as CocoFile;
    } catch (e) {
      throw new DatasetError(`${path}: not valid JSON (${oneLine((e as Error).message)}); is the file truncated?`);
    }
    if (typeof f !== 'object' || f === null || Array.isArray(f) || !Array.isArray(f.images) || !Array.isArray(f.annotations)) {
      throw new DatasetError(`${path}: a COCO captions file needs "images" and "annotations" arrays`);
    }
    const files = new Map(f.images.map((im) => [im?.id, im?.file_name]));
    samples = f.annotations.map((a, ordinal) => ({ ordinal, key: String(a?.id ?? ordinal), image: files.get(a?.image_id), caption: a?.caption }));
    if (cache.size > 4) cache.clear();
    cache.set(path, samples);
  }
  return samples;
}

export function countCocoSamples(path: string): number {
  return readCoco(path).length;
}
