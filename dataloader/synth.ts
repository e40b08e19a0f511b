/**
 * `blip2 data synth`: a synthetic caption dataset that needs no download. Each image shows two coloured shapes on
 * a noisy background; the caption names both objects' size, colour and shape and their relative position
 * ("a small red circle above a large blue square"), so a model has to bind attributes to objects and read
 * geometry. Each sample's json carries question/answer pairs for VQA. Written as WebDataset shards
 * (`train/00000.tar`, `val/00000.tar`), with `tokenizer.json` (BERT-style WordPiece over the closed vocabulary, for
 * the Q-Former), `opt-tokenizer/tokenizer.json` (OPT-style byte-level BPE, for the stage-2 language model) and
 * `index.json`.
 */
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import sharp from 'sharp';
import { writeIndex, type DatasetEntry, type DatasetIndex } from './dataset-index';
import { DatasetError } from './errors';
import { writeTarShard } from './formats/webdataset';
import { randInt, seededRandom } from './rng';
import { bertTokenizerJson, byteLevelBpeTokenizerJson } from './tokenizer';

export const SYNTH_COLOURS: Record<string, readonly [number, number, number]> = {
  red: [215, 40, 40],
  green: [40, 165, 60],
  blue: [40, 80, 215],
  yellow: [230, 205, 40],
  purple: [135, 55, 170],
  orange: [240, 135, 30],
};
export const SYNTH_SHAPES = ['circle', 'square', 'triangle'] as const;
export const SYNTH_SIZES = ['small', 'large'] as const;
/** Relation of the first object to the second, and the phrase a caption uses. */
export const SYNTH_RELATIONS = { above: 'above', below: 'below', left: 'to the left of', right: 'to the right of' } as const;
const INVERSE = { above: 'below', below: 'above', left: 'right', right: 'left' } as const;

type Shape = (typeof SYNTH_SHAPES)[number];
type Size = (typeof SYNTH_SIZES)[number];
type Relation = keyof typeof SYNTH_RELATIONS;

export interface SynthObject {
  colour: string;
  shape: Shape;
  size: Size;
  /** Centre and radius in pixels. */
  cx: number;
  cy: number;
  radius: number;
}

export interface SynthScene {
  objects: [SynthObject, SynthObject];
  /** Where objects[0] is relative to objects[1]. */
  relation: Relation;
  captions: string[];
  qa: Array<{ question: string; answer: string }>;
}

export interface SynthOptions {
  /** Output folder (created). */
  out: string;
  /** Total samples, train + val. Default 1,000. */
  samples?: number;
  /** Samples per tar shard. Default 1,000 (img2dataset writes 10,000). */
  shardSize?: number;
  /** Default 0. */
  seed?: number;
  /** Image side in pixels. Default 224. */
  imageSize?: number;
  /** Fraction of samples held out in `val/`. Default 0.1. */
  valFraction?: number;
  /** Image encoding. Default `jpeg` (as img2dataset). */
  imageFormat?: 'jpeg' | 'png';
}

const phrase = (o: SynthObject) => `a ${o.size} ${o.colour} ${o.shape}`;

/** The scene of sample `n`: a pure function of (seed, n, image size). */
export function synthScene(seed: number, n: number, side: number): SynthScene {
  const rand = seededRandom('synth', seed, n);
  const colours = Object.keys(SYNTH_COLOURS);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const c0 = pick(colours);
  const c1 = pick(colours.filter((c) => c !== c0));
  const s0 = pick(SYNTH_SHAPES);
  const s1 = pick(SYNTH_SHAPES.filter((s) => s !== s0));
  const relation = pick(Object.keys(SYNTH_RELATIONS) as Relation[]);
  const place = (colour: string, shape: Shape, half: 'top' | 'bottom' | 'left' | 'right'): SynthObject => {
    const size = pick(SYNTH_SIZES);
    // Radius as a fraction of the side, jittered, so that size is a visual judgement, not a constant.
    const radius = Math.max(2, Math.round(side * (size === 'small' ? 0.09 + rand() * 0.04 : 0.17 + rand() * 0.05)));
    const lo = (a: number) => Math.ceil(a + radius), hi = (b: number) => Math.floor(b - radius);
    const h = side / 2;
    const along = randInt(rand, lo(0), hi(side) + 1);
    const across = (a: number, b: number) => randInt(rand, lo(a), Math.max(lo(a), hi(b)) + 1);
    const [cx, cy] =
      half === 'top' ? [along, across(0, h)] : half === 'bottom' ? [along, across(h, side)] :
      half === 'left' ? [across(0, h), along] : [across(h, side), along];
    return { colour, shape, size, cx, cy, radius };
  };
  const halves: Record<Relation, ['top' | 'bottom' | 'left' | 'right', 'top' | 'bottom' | 'left' | 'right']> = {
    above: ['top', 'bottom'], below: ['bottom', 'top'], left: ['left', 'right'], right: ['right', 'left'],
  };
  const [h0, h1] = halves[relation];
  const a = place(c0, s0, h0);
  const b = place(c1, s1, h1);
  const truthful = rand() < 0.5;
  const captions = [
    `${phrase(a)} ${SYNTH_RELATIONS[relation]} ${phrase(b)}`,
    `${phrase(b)} ${SYNTH_RELATIONS[INVERSE[relation]]} ${phrase(a)}`,
  ];
  const qa = [
    { question: `what colour is the ${a.shape}?`, answer: a.colour },
    { question: `what colour is the ${b.shape}?`, answer: b.colour },
    { question: `what shape is the ${b.colour} object?`, answer: b.shape },
    { question: `what size is the ${a.colour} ${a.shape}?`, answer: a.size },
    { question: `where is the ${a.shape} relative to the ${b.shape}?`, answer: relation },
    // A yes/no question, true or false with equal odds (so "no" is not a shortcut).
    truthful
      ? { question: `is the ${a.colour} ${a.shape} ${SYNTH_RELATIONS[relation]} the ${b.colour} ${b.shape}?`, answer: 'yes' }
      : { question: `is the ${b.colour} ${b.shape} ${SYNTH_RELATIONS[relation]} the ${a.colour} ${a.shape}?`, answer: 'no' },
  ];
  return { objects: [a, b], relation, captions, qa };
}

function inside(o: SynthObject, x: number, y: number): boolean {
  const dx = x + 0.5 - o.cx, dy = y + 0.5 - o.cy, r = o.radius;
  if (o.shape === 'circle') return dx * dx + dy * dy <= r * r;
  if (o.shape === 'square') return Math.abs(dx) <= r * 0.85 && Math.abs(dy) <= r * 0.85;
  // Upward triangle: apex at (0, -r), base at y = +0.8r, half-width 0.95r at the base.
  if (dy < -r || dy > 0.8 * r) return false;
  return Math.abs(dx) <= ((dy + r) / (1.8 * r)) * 0.95 * r;
}

/** Packed RGB pixels [side, side, 3] of a scene. */
export function renderScene(scene: SynthScene, side: number, seed: number, n: number): Buffer {
  const rand = seededRandom('pixels', seed, n);
  const px = Buffer.alloc(side * side * 3);
  const base = 90 + Math.floor(rand() * 110); // background grey level varies per image
  const tint = [rand() * 30 - 15, rand() * 30 - 15, rand() * 30 - 15];
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const o = scene.objects.find((ob) => inside(ob, x, y));
      const noise = (rand() - 0.5) * 24;
      const c = o ? SYNTH_COLOURS[o.colour]! : [base + tint[0]!, base + tint[1]!, base + tint[2]!];
      const p = (y * side + x) * 3;
      for (let k = 0; k < 3; k++) px[p + k] = Math.max(0, Math.min(255, Math.round(c[k]! + noise)));
    }
  }
  return px;
}

/** What one word of a caption changes in a `synthCaptionVariants` variant. */
export type SynthVariantKind = 'colour' | 'size' | 'shape' | 'axis' | 'relation' | 'colour binding' | 'shape binding';

const CAPTION_PATTERN = new RegExp(
  `^a (${SYNTH_SIZES.join('|')}) (${Object.keys(SYNTH_COLOURS).join('|')}) (${SYNTH_SHAPES.join('|')}) (${Object.values(SYNTH_RELATIONS).join('|')}) ` +
  `a (${SYNTH_SIZES.join('|')}) (${Object.keys(SYNTH_COLOURS).join('|')}) (${SYNTH_SHAPES.join('|')})$`,
);

/**
 * False captions that differ from a synthetic caption in one thing: an object's colour (to one the image does not
 * have), its size, its shape (to the one the image does not have), the relation's axis (above/below for left/right,
 * or the reverse), the relation reversed (which object is where), or the two objects' colours or shapes swapped. A model that prefers the true caption to each variant of a kind can tell that kind
 * apart. Undefined for a caption that is not in the synthetic grammar.
 */
export function synthCaptionVariants(caption: string): Array<{ kind: SynthVariantKind; caption: string }> | undefined {
  const m = CAPTION_PATTERN.exec(caption.trim().toLowerCase());
  if (!m) return undefined;
  type Obj = { size: string; colour: string; shape: string };
  const a: Obj = { size: m[1]!, colour: m[2]!, shape: m[3]! };
  const b: Obj = { size: m[5]!, colour: m[6]!, shape: m[7]! };
  const rel = m[4]!;
  const say = (x: Obj, r: string, y: Obj) => `a ${x.size} ${x.colour} ${x.shape} ${r} a ${y.size} ${y.colour} ${y.shape}`;
  const other = { small: 'large', large: 'small' } as Record<string, string>;
  const reverse: Record<string, string> = { above: 'below', below: 'above', 'to the left of': 'to the right of', 'to the right of': 'to the left of' };
  const out: Array<{ kind: SynthVariantKind; caption: string }> = [];
  const unusedColours = Object.keys(SYNTH_COLOURS).filter((c) => c !== a.colour && c !== b.colour);
  const unusedShapes = SYNTH_SHAPES.filter((s) => s !== a.shape && s !== b.shape);
  for (const c of unusedColours) out.push({ kind: 'colour', caption: say({ ...a, colour: c }, rel, b) }, { kind: 'colour', caption: say(a, rel, { ...b, colour: c }) });
  for (const s of unusedShapes) out.push({ kind: 'shape', caption: say({ ...a, shape: s }, rel, b) }, { kind: 'shape', caption: say(a, rel, { ...b, shape: s }) });
  out.push({ kind: 'size', caption: say({ ...a, size: other[a.size]! }, rel, b) }, { kind: 'size', caption: say(a, rel, { ...b, size: other[b.size]! }) });
  out.push({ kind: 'relation', caption: say(a, reverse[rel]!, b) });
  for (const r of Object.values(SYNTH_RELATIONS)) if (r !== rel && r !== reverse[rel]) out.push({ kind: 'axis', caption: say(a, r, b) });
  if (a.colour !== b.colour) out.push({ kind: 'colour binding', caption: say({ ...a, colour: b.colour }, rel, { ...b, colour: a.colour }) });
  if (a.shape !== b.shape) out.push({ kind: 'shape binding', caption: say({ ...a, shape: b.shape }, rel, { ...b, shape: a.shape }) });
  return out;
}

/** Every word the synthetic captions, questions and answers use (the tokenizer's vocabulary). */
export function synthVocabulary(): string[] {
  const words = new Set<string>([
    'a', 'the', 'what', 'colour', 'color', 'shape', 'size', 'is', 'object', 'where', 'relative', 'to', 'of', 'yes', 'no', '?',
    ...Object.keys(SYNTH_COLOURS), ...SYNTH_SHAPES, ...SYNTH_SIZES, 'above', 'below', 'left', 'right',
  ]);
  return [...words];
}

/** The stage-2 LM's words: the captions' and questions', and those of LAVIS's VQA prompt ("Question: {} Short answer:"). */
export function synthLmVocabulary(): string[] {
  return [...synthVocabulary(), 'Question', 'Short', 'answer'];
}

export interface SynthResult {
  index: DatasetIndex;
  indexPath: string;
  tokenizerPath: string;
  /** The stage-2 language model's tokenizer.json (`opt-tokenizer/tokenizer.json`). */
  lmTokenizerPath: string;
}

/** Where `writeSynthDataset` puts the language model's tokenizer, relative to the dataset folder. */
export const LM_TOKENIZER_PATH = 'opt-tokenizer/tokenizer.json';

export async function writeSynthDataset(options: SynthOptions): Promise<SynthResult> {
  const total = options.samples ?? 1000;
  const shardSize = options.shardSize ?? 1000;
  const seed = options.seed ?? 0;
  const side = options.imageSize ?? 224;
  const valFraction = options.valFraction ?? 0.1;
  const format = options.imageFormat ?? 'jpeg';
  const check = (ok: boolean, msg: string) => { if (!ok) throw new DatasetError(msg); };
  check(Number.isInteger(total) && total >= 2, `--samples must be an integer >= 2, got ${total}`);
  check(Number.isInteger(shardSize) && shardSize >= 1, `--shard-size must be a positive integer, got ${shardSize}`);
  check(Number.isInteger(seed), `--seed must be an integer, got ${seed}`);
  check(Number.isInteger(side) && side >= 16 && side <= 1024, `--image-size must be an integer in [16, 1024], got ${side}`);
  check(valFraction > 0 && valFraction < 1, `--val-fraction must be in (0, 1), got ${valFraction}`);
  const valCount = Math.max(1, Math.round(total * valFraction));
  const splits: Array<{ split: string; from: number; to: number }> = [
    { split: 'train', from: 0, to: total - valCount },
    { split: 'val', from: total - valCount, to: total },
  ];
  makeOutputFolder(options.out);
  const datasets: DatasetEntry[] = [];
  for (const { split, from, to } of splits) {
    mkdirSync(join(options.out, split), { recursive: true });
    const entry: DatasetEntry = { name: split, format: 'webdataset', split, samples: to - from, shards: [] };
    for (let s = from, shardNo = 0; s < to; s += shardSize, shardNo++) {
      const rel = `${split}/${String(shardNo).padStart(5, '0')}.tar`;
      const samples: Array<{ key: string; files: Array<[string, Buffer]> }> = [];
      for (let n = s; n < Math.min(to, s + shardSize); n++) {
        const scene = synthScene(seed, n, side);
        const raw = renderScene(scene, side, seed, n);
        const img = sharp(raw, { raw: { width: side, height: side, channels: 3 } });
        const bytes = format === 'jpeg' ? await img.jpeg({ quality: 90 }).toBuffer() : await img.png().toBuffer();
        const key = String(n).padStart(9, '0');
        const caption = scene.captions[seededRandom('synth-caption', seed, n)() < 0.5 ? 0 : 1]!;
        const json = { key, caption, captions: scene.captions, qa: scene.qa, objects: scene.objects, relation: scene.relation, width: side, height: side };
        samples.push({ key, files: [[format === 'jpeg' ? 'jpg' : 'png', bytes], ['txt', Buffer.from(caption)], ['json', Buffer.from(JSON.stringify(json))]] });
      }
      await writeTarShard(join(options.out, rel), samples);
      entry.shards.push({ path: rel, samples: samples.length, bytes: statSync(join(options.out, rel)).size });
    }
    datasets.push(entry);
  }
  const tokenizerPath = join(options.out, 'tokenizer.json');
  writeFileSync(tokenizerPath, JSON.stringify(bertTokenizerJson(synthVocabulary()), null, 1));
  writeFileSync(join(options.out, 'tokenizer_config.json'), JSON.stringify({ do_lower_case: true, model_max_length: 32, tokenizer_class: 'BertTokenizer' }, null, 1));
  // The stage-2 language model's tokenizer (OPT-style byte-level BPE), in its own folder as Hugging Face keeps one.
  const lmTokenizerPath = join(options.out, LM_TOKENIZER_PATH);
  mkdirSync(dirname(lmTokenizerPath), { recursive: true });
  writeFileSync(lmTokenizerPath, JSON.stringify(byteLevelBpeTokenizerJson(synthLmVocabulary()), null, 1));
  writeFileSync(join(dirname(lmTokenizerPath), 'tokenizer_config.json'), JSON.stringify({ add_bos_token: true, model_max_length: 2048, tokenizer_class: 'GPT2Tokenizer' }, null, 1));
  const index: DatasetIndex = { version: 1, datasets };
  const indexPath = join(options.out, 'index.json');
  writeIndex(indexPath, index);
  return { index, indexPath, tokenizerPath, lmTokenizerPath };
}

/**
 * Creates `dir` one folder at a time from its nearest existing parent, so that a path that cannot be created
 * (`/proc/x/y`, under a file, read-only) fails at once with a DatasetError naming it. (A recursive mkdirSync under
 * /proc never returns.)
 */
export function makeOutputFolder(dir: string): void {
  const missing: string[] = [];
  let p = resolve(dir);
  while (!existsSync(p)) {
    missing.unshift(p);
    const up = dirname(p);
    if (up === p) break;
    p = up;
  }
  if (existsSync(p) && !statSync(p).isDirectory()) throw new DatasetError(`cannot create ${dir}: ${p} is a file, not a folder`);
  for (const m of missing) {
    try {
      mkdirSync(m);
    } catch (e) {
      throw new DatasetError(`cannot create ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} at ${m}`);
    }
  }
}
