// The synthetic caption dataset: shards, index and tokenizer written; captions true to the pictures; a non-trivial task.
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, test, afterAll } from 'vitest';
import { buildIndex, loadIndex } from './dataset-index';
import { countTarSamples, readTarSamples } from './formats/webdataset';
import { SYNTH_COLOURS, SYNTH_RELATIONS, renderScene, synthCaptionVariants, synthScene, writeSynthDataset, type SynthScene } from './synth';
import { CaptionTokenizer } from './tokenizer';

const tempDirs: string[] = [];
const tempDir = (prefix: string) => { const d = mkdtempSync(join(tmpdir(), prefix)); tempDirs.push(d); return d; };
afterAll(() => { for (const d of tempDirs) rmSync(d, { recursive: true, force: true }); });


describe('synthetic caption dataset', () => {
  const out = tempDir('blip2-synth-');
  beforeAll(async () => {
    await writeSynthDataset({ out, samples: 60, shardSize: 25, imageSize: 48, seed: 3, imageFormat: 'png' });
  });

  test('writes train and val WebDataset shards, an index with counts and sizes, and a tokenizer', async () => {
    const index = loadIndex(join(out, 'index.json'));
    expect(index.datasets.map((d) => [d.name, d.split, d.samples, d.shards.length])).toEqual([['train', 'train', 54, 3], ['val', 'val', 6, 1]]);
    for (const d of index.datasets) for (const s of d.shards) expect(await countTarSamples(join(out, s.path))).toEqual({ samples: s.samples });
    // `blip2 data index` finds the same shards, counts and sizes.
    expect((await buildIndex(out)).datasets).toEqual(index.datasets);
    const tok = CaptionTokenizer.fromFile(join(out, 'tokenizer.json'));
    const unk = tok.encode('[UNK]')[1];
    for await (const s of readTarSamples(join(out, 'train/00000.tar'))) {
      const meta = JSON.parse(s.files.get('json')!.toString()) as { caption: string; qa: Array<{ question: string; answer: string }> };
      expect(s.files.get('txt')!.toString()).toBe(meta.caption);
      expect(s.files.has('png')).toBe(true);
      // Every caption, question and answer word is in the vocabulary.
      for (const text of [meta.caption, ...meta.qa.flatMap((q) => [q.question, q.answer])]) expect(tok.encode(text)).not.toContain(unk);
    }
  });

  test('captions describe what is drawn: colours at the object centres, relation from the positions', async () => {
    for (let n = 0; n < 40; n++) {
      const scene = synthScene(3, n, 48);
      const [a, b] = scene.objects;
      const px = renderScene(scene, 48, 3, n);
      for (const o of scene.objects) {
        const p = (o.cy * 48 + o.cx) * 3;
        const want = SYNTH_COLOURS[o.colour]!;
        for (let k = 0; k < 3; k++) expect(Math.abs(px[p + k]! - want[k]!)).toBeLessThanOrEqual(12);
      }
      const rel = scene.relation;
      if (rel === 'above') expect(a.cy).toBeLessThan(b.cy);
      if (rel === 'below') expect(a.cy).toBeGreaterThan(b.cy);
      if (rel === 'left') expect(a.cx).toBeLessThan(b.cx);
      if (rel === 'right') expect(a.cx).toBeGreaterThan(b.cx);
      expect(scene.captions[0]).toBe(`a ${a.size} ${a.colour} ${a.shape} ${SYNTH_RELATIONS[rel]} a ${b.size} ${b.colour} ${b.shape}`);
      expect(scene.qa).toContainEqual({ question: `what colour is the ${a.shape}?`, answer: a.colour });
    }
    // The image file holds the rendered pixels (PNG is lossless).
    for await (const s of readTarSamples(join(out, 'train/00000.tar'))) {
      const n = Number(s.key);
      const { data } = await sharp(s.files.get('png')!).raw().toBuffer({ resolveWithObject: true });
      expect(Buffer.compare(data, renderScene(synthScene(3, n, 48), 48, 3, n))).toBe(0);
      break;
    }
  });

  test('the task is not trivial: every colour, shape, size and relation occurs, in many combinations', () => {
    const scenes: SynthScene[] = Array.from({ length: 400 }, (_, n) => synthScene(0, n, 64));
    const seen = (f: (s: SynthScene) => string) => new Set(scenes.map(f)).size;
    expect(seen((s) => s.objects[0].colour)).toBe(6);
    expect(seen((s) => s.objects[1].shape)).toBe(3);
    expect(seen((s) => s.objects[0].size + s.objects[1].size)).toBe(4);
    expect(seen((s) => s.relation)).toBe(4);
    expect(seen((s) => s.captions[0]!)).toBeGreaterThan(300);
    const yesNo = scenes.map((s) => s.qa.at(-1)!.answer);
    expect(yesNo.filter((a) => a === 'yes').length / yesNo.length).toBeGreaterThan(0.4);
    expect(yesNo.filter((a) => a === 'no').length / yesNo.length).toBeGreaterThan(0.4);
    // The two objects always differ in colour and shape, so questions about "the circle" have one answer.
    for (const s of scenes) {
      expect(s.objects[0].colour).not.toBe(s.objects[1].colour);
      expect(s.objects[0].shape).not.toBe(s.objects[1].shape);
    }
  });

  test('the same seed writes the same bytes', async () => {
    const again = tempDir('blip2-synth-');
    await writeSynthDataset({ out: again, samples: 60, shardSize: 25, imageSize: 48, seed: 3, imageFormat: 'png' });
    expect(Buffer.compare(readFileSync(join(out, 'train/00001.tar')), readFileSync(join(again, 'train/00001.tar')))).toBe(0);
  });
});

test('synthCaptionVariants: each variant changes one thing of the caption; other captions have none', () => {
  const v = synthCaptionVariants('a small red circle above a large blue square')!;
  const of = (kind: string) => v.filter((x) => x.kind === kind).map((x) => x.caption);
  expect(of('colour')).toHaveLength(8); // 4 colours the image lacks, for each object
  expect(of('colour')).toContain('a small green circle above a large blue square');
  expect(of('colour')).toContain('a small red circle above a large yellow square');
  expect(of('shape')).toEqual(['a small red triangle above a large blue square', 'a small red circle above a large blue triangle']);
  expect(of('size')).toEqual(['a large red circle above a large blue square', 'a small red circle above a small blue square']);
  expect(of('relation')).toEqual(['a small red circle below a large blue square']);
  expect(of('axis')).toEqual(['a small red circle to the left of a large blue square', 'a small red circle to the right of a large blue square']);
  expect(of('colour binding')).toEqual(['a small blue circle above a large red square']);
  expect(of('shape binding')).toEqual(['a small red square above a large blue circle']);
  expect(new Set(v.map((x) => x.caption)).size).toBe(v.length);
  expect(v.map((x) => x.caption)).not.toContain('a small red circle above a large blue square');
  // Every generated caption parses, and its variants are captions of the same grammar.
  for (let n = 0; n < 50; n++) for (const c of synthScene(5, n, 32).captions) expect(synthCaptionVariants(c), c).toBeDefined();
  expect(synthCaptionVariants('a dog on a sofa')).toBeUndefined();
});
