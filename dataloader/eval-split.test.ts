// readEvalSplit over the formats a held-out split comes in: a COCO captions file (annotations grouped by image), a
// JSONL manifest (every caption of a row), the synthetic WebDataset shards (json captions and qa); images missing
// from disk are skipped and counted; --limit, captions-only reading, and a split the index lacks.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeIndex } from './dataset-index';
import { readEvalSplit } from './eval-split';
import { writeSynthDataset } from './synth';

let dir = '';
let png: Buffer;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'blip2-eval-split-'));
  png = await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: 200, g: 10, b: 10 } } }).png().toBuffer();
  mkdirSync(join(dir, 'images'));
  for (const f of ['a.png', 'b.png', 'c.png']) writeFileSync(join(dir, 'images', f), png);
  writeFileSync(join(dir, 'captions_val.json'), JSON.stringify({
    images: [{ id: 1, file_name: 'a.png' }, { id: 2, file_name: 'b.png' }, { id: 3, file_name: 'gone.png' }],
    annotations: [
      { id: 10, image_id: 1, caption: 'A red square.' }, { id: 11, image_id: 2, caption: 'Another one.' },
      { id: 12, image_id: 1, caption: 'A square, red.' }, { id: 13, image_id: 3, caption: 'Lost.' }, { id: 14, image_id: 1, caption: 'Red.' },
    ],
  }));
  writeFileSync(join(dir, 'rows.jsonl'), ['{"image": "c.png", "caption": "one", "captions": ["two"]}', '{"image": "b.png", "caption": "three"}'].join('\n'));
  writeFileSync(join(dir, 'train.jsonl'), '{"image": "a.png", "caption": "train caption"}\n');
  writeIndex(join(dir, 'index.json'), {
    version: 1,
    datasets: [
      { name: 'coco_val', format: 'coco', split: 'val', imageRoot: 'images', samples: 5, shards: [{ path: 'captions_val.json', samples: 5, bytes: 1 }] },
      { name: 'rows', format: 'jsonl', split: 'val', imageRoot: 'images', samples: 2, shards: [{ path: 'rows.jsonl', samples: 2, bytes: 1 }] },
      { name: 'mine', format: 'jsonl', imageRoot: 'images', samples: 1, shards: [{ path: 'train.jsonl', samples: 1, bytes: 1 }] },
    ],
  });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('readEvalSplit', () => {
  it('groups COCO annotations by image, keeps every caption of a manifest row, skips missing images', async () => {
    const s = await readEvalSplit(dir, 'val');
    expect(s.datasets).toEqual(['coco_val', 'rows']);
    expect(s.samples.map((x) => [x.id, x.captions])).toEqual([
      ['coco_val/a.png', ['A red square.', 'A square, red.', 'Red.']],
      ['coco_val/b.png', ['Another one.']],
      ['rows/0', ['one', 'two']],
      ['rows/1', ['three']],
    ]);
    expect(s.skipped).toBe(1); // gone.png
    expect(Buffer.from(s.samples[0]!.image!).equals(png)).toBe(true);
    expect(s.samples.every((x) => x.qa.length === 0)).toBe(true);
  });

  it('--limit takes the first images; captions only without images; train = the datasets without a split', async () => {
    expect((await readEvalSplit(dir, 'val', { limit: 3 })).samples.map((x) => x.id)).toEqual(['coco_val/a.png', 'coco_val/b.png', 'rows/0']);
    const noImages = await readEvalSplit(dir, 'val', { images: false });
    expect(noImages.samples.every((x) => x.image === undefined)).toBe(true);
    expect((await readEvalSplit(dir, 'train', { images: false })).samples.map((x) => x.captions)).toEqual([['train caption']]);
    await expect(readEvalSplit(dir, 'test')).rejects.toThrow(/no dataset of split "test" \(the index has: val, mine\)/);
    await expect(readEvalSplit(join(dir, 'images'), 'val')).rejects.toThrow(/no index\.json/);
  });

  it('the synthetic shards: both captions of an image and its questions', async () => {
    const synth = join(dir, 'synth');
    await writeSynthDataset({ out: synth, samples: 20, shardSize: 8, imageSize: 16, seed: 2 });
    const s = await readEvalSplit(synth, 'val');
    expect(s.samples).toHaveLength(2);
    for (const x of s.samples) {
      expect(x.captions).toHaveLength(2);
      expect(x.qa).toHaveLength(6);
      expect(x.id).toMatch(/^val\/\d{9}$/);
    }
  });
});
