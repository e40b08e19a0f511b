/**
 * COCO captions annotation files (`captions_train2017.json`): `images` [{id, file_name}] and `annotations`
 * [{id, image_id, caption}]. One sample per annotation, in file order, as LAVIS's COCO caption dataset; the key is
 * the annotation id. Image files are `<imageRoot>/<file_name>`.
 */
import { readFileSync } from 'node:fs';

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

export function readCoco(path: string): CocoSample[] {
  let samples = cache.get(path);
  if (!samples) {
    const f = JSON.parse(readFileSync(path, 'utf8')) as CocoFile;
    if (!Array.isArray(f.images) || !Array.isArray(f.annotations)) {
      throw new Error(`${path}: a COCO captions file needs "images" and "annotations" arrays`);
    }
    const files = new Map(f.images.map((im) => [im.id, im.file_name]));
    samples = f.annotations.map((a, ordinal) => ({ ordinal, key: String(a.id ?? ordinal), image: files.get(a.image_id), caption: a.caption }));
    if (cache.size > 4) cache.clear();
    cache.set(path, samples);
  }
  return samples;
}

export function countCocoSamples(path: string): number {
  return readCoco(path).length;
}
