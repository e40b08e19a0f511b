/**
 * Scoring a captioner's output as LAVIS does it (COCO caption evaluation): a COCO results list
 * `[{image_id, caption}]` against a COCO captions file (`{images?, annotations: [{image_id, caption}]}`), both
 * PTB-tokenised (ptb-tokenize.ts), scored with corpus BLEU-1..4 and CIDEr-D. The evaluated images are those of the
 * captions file (its `images` list, or the images its annotations name), as `COCOEvalCap` takes
 * `coco.getImgIds()`; the reference code asserts one result per image and no result for an unknown image, which
 * become errors naming the file here.
 */
import { readFileSync } from 'node:fs';
import { UsageError } from '../../common';
import { corpusBleu } from './bleu';
import { ciderD } from './cider';
import { cocoTokenize } from './ptb-tokenize';

export type ImageId = number | string;

/** Figures with pycocoevalcap's keys (`COCOEvalCap.eval`), plus how many images were scored. */
export interface CaptionScores {
  Bleu_1: number;
  Bleu_2: number;
  Bleu_3: number;
  Bleu_4: number;
  CIDEr: number;
  images: number;
}

/** Captions by image: one prediction and one or more references each. */
export interface CaptionSet {
  ids: ImageId[];
  predictions: Map<string, string>;
  references: Map<string, string[]>;
}

const key = (id: ImageId): string => JSON.stringify(id);
const isId = (v: unknown): v is ImageId => (typeof v === 'number' && Number.isFinite(v)) || typeof v === 'string';

function readJson(file: string, what: string): unknown {
  const text = readFileSync(file, 'utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${file}: not valid JSON (${(err as Error).message}); expected ${what}`);
  }
}

/** A COCO results list `[{image_id, caption}]` (extra keys allowed). */
export function parseCocoResults(json: unknown, file: string): Array<{ image_id: ImageId; caption: string }> {
  if (!Array.isArray(json)) throw new UsageError(`${file}: expected a COCO results list [{"image_id": …, "caption": "…"}], got ${json === null ? 'null' : typeof json}`);
  return json.map((r: unknown, i) => {
    const o = r as { image_id?: unknown; caption?: unknown };
    if (typeof o !== 'object' || o === null || !isId(o.image_id)) throw new UsageError(`${file}: entry ${i} has no image_id (a number or string)`);
    if (typeof o.caption !== 'string') throw new UsageError(`${file}: entry ${i} (image_id ${JSON.stringify(o.image_id)}) has no caption string`);
    return { image_id: o.image_id, caption: o.caption };
  });
}

/** A COCO captions file: the evaluated image ids and their references. */
export function parseCocoCaptions(json: unknown, file: string): { ids: ImageId[]; references: Map<string, string[]> } {
  const o = json as { images?: unknown; annotations?: unknown };
  if (typeof o !== 'object' || o === null || Array.isArray(o) || !Array.isArray(o.annotations)) {
    throw new UsageError(`${file}: expected a COCO captions file {"images": [...], "annotations": [{"image_id": …, "caption": "…"}]}`);
  }
  const references = new Map<string, string[]>();
  const ids: ImageId[] = [];
  const addId = (id: ImageId) => {
    if (!references.has(key(id))) { references.set(key(id), []); ids.push(id); }
  };
  if (o.images !== undefined) {
    if (!Array.isArray(o.images)) throw new UsageError(`${file}: "images" must be a list of {"id": …}`);
    o.images.forEach((img: unknown, i) => {
      const id = (img as { id?: unknown } | null)?.id;
      if (!isId(id)) throw new UsageError(`${file}: images[${i}] has no id (a number or string)`);
      addId(id);
    });
  }
  const listed = o.images !== undefined;
  o.annotations.forEach((a: unknown, i) => {
    const ann = a as { image_id?: unknown; caption?: unknown } | null;
    if (!ann || !isId(ann.image_id)) throw new UsageError(`${file}: annotations[${i}] has no image_id (a number or string)`);
    if (typeof ann.caption !== 'string') throw new UsageError(`${file}: annotations[${i}] (image_id ${JSON.stringify(ann.image_id)}) has no caption string`);
    if (!references.has(key(ann.image_id))) {
      if (listed) throw new UsageError(`${file}: annotations[${i}] names image_id ${JSON.stringify(ann.image_id)}, which is not in "images"`);
      addId(ann.image_id);
    }
    references.get(key(ann.image_id))!.push(ann.caption);
  });
  for (const id of ids) if (references.get(key(id))!.length === 0) throw new UsageError(`${file}: image ${JSON.stringify(id)} has no reference caption`);
  if (ids.length === 0) throw new UsageError(`${file}: no images to evaluate`);
  return { ids, references };
}

/** Pair results with references: exactly one result for every evaluated image, none for another image. */
export function pairCaptions(
  results: ReadonlyArray<{ image_id: ImageId; caption: string }>,
  refs: { ids: ImageId[]; references: Map<string, string[]> },
  files: { predictions: string; references: string } = { predictions: 'predictions', references: 'references' },
): CaptionSet {
  const predictions = new Map<string, string>();
  for (const r of results) {
    const k = key(r.image_id);
    if (!refs.references.has(k)) throw new UsageError(`${files.predictions}: image_id ${JSON.stringify(r.image_id)} is not in ${files.references}`);
    if (predictions.has(k)) throw new UsageError(`${files.predictions}: more than one caption for image_id ${JSON.stringify(r.image_id)} (the evaluation takes one per image)`);
    predictions.set(k, r.caption);
  }
  const missing = refs.ids.filter((id) => !predictions.has(key(id)));
  if (missing.length > 0) {
    const shown = missing.slice(0, 5).map((id) => JSON.stringify(id)).join(', ');
    throw new UsageError(`${files.predictions}: no caption for ${missing.length} of the ${refs.ids.length} images of ${files.references} (image_id ${shown}${missing.length > 5 ? ', …' : ''})`);
  }
  return { ids: refs.ids, predictions, references: refs.references };
}

/** BLEU-1..4 and CIDEr-D of a paired set, after PTB tokenisation of predictions and references. */
export function scoreCaptions(set: CaptionSet): CaptionScores {
  const items = set.ids.map((id) => ({
    hypothesis: cocoTokenize(set.predictions.get(key(id))!),
    references: set.references.get(key(id))!.map(cocoTokenize),
  }));
  const bleu = corpusBleu(items, 4).bleu;
  const cider = ciderD(items).score;
  return { Bleu_1: bleu[0]!, Bleu_2: bleu[1]!, Bleu_3: bleu[2]!, Bleu_4: bleu[3]!, CIDEr: cider, images: items.length };
}

/** `blip2 eval --task caption --predictions … --references …`: read both files, pair, score. */
export function scoreCaptionFiles(predictionsFile: string, referencesFile: string): CaptionScores {
  const results = parseCocoResults(readJson(predictionsFile, 'a COCO results list'), predictionsFile);
  const refs = parseCocoCaptions(readJson(referencesFile, 'a COCO captions file'), referencesFile);
  return scoreCaptions(pairCaptions(results, refs, { predictions: predictionsFile, references: referencesFile }));
}
