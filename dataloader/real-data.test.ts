// Real-format data written by the test (JPEG/PNG/GIF/WebP/TIFF by sharp, tars cut at every kind of boundary, COCO
// and Karpathy layouts, manifests with blank and broken lines): what is used, what is skipped and why, what is lost.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { checkDatasets } from './check';
import { describeIndex, scanDatasets, trainingDatasets } from './dataset-index';
import { descriptorId, type ShardDescriptor } from './descriptor';
import { countTarSamples, readTarSamples, writeTarShard } from './formats/webdataset';
import { readManifest } from './formats/manifest';
import { readShard, type ShardItem } from './shard-reader';

const dirs: string[] = [];
const tempDir = () => { const d = mkdtempSync(join(tmpdir(), 'blip2-real-')); dirs.push(d); return d; };
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

let jpeg: Buffer, png: Buffer, gif: Buffer, webp: Buffer, tiff: Buffer;
beforeAll(async () => {
  const img = () => sharp({ create: { width: 40, height: 30, channels: 3, background: '#c83' } });
  [jpeg, png, gif, webp, tiff] = await Promise.all([img().jpeg().toBuffer(), img().png().toBuffer(), img().gif().toBuffer(), img().webp().toBuffer(), img().tiff().toBuffer()]);
});

/** A minimal valid 2x2 24-bit BMP (sharp does not decode BMP). */
function bmp(): Buffer {
  const row = 2 * 3 + 2; // padded to 4 bytes
  const size = 54 + row * 2;
  const b = Buffer.alloc(size);
  b.write('BM', 0, 'latin1'); b.writeUInt32LE(size, 2); b.writeUInt32LE(54, 10); b.writeUInt32LE(40, 14);
  b.writeInt32LE(2, 18); b.writeInt32LE(2, 22); b.writeUInt16LE(1, 26); b.writeUInt16LE(24, 28); b.writeUInt32LE(row * 2, 34);
  return b;
}

const descriptorFor = (shard: string, start: number, end: number, format: ShardDescriptor['format'] = 'webdataset', imageRoot?: string): ShardDescriptor => {
  const r = { v: 1 as const, epoch: 0, seed: 0, dataset: 'd', format, shard, start, end, ...(imageRoot ? { imageRoot } : {}) };
  return { ...r, id: descriptorId(r), order: 0 };
};
const readAll = async (d: ShardDescriptor, dataRoot: string) => {
  const items: ShardItem[] = [];
  for await (const it of readShard(d, { dataRoot })) items.push(it);
  return items;
};

describe('issue: images by content, one image a sample', () => {
  test('JPEG, PNG, GIF, WebP and TIFF samples are used whatever their extension; two images, BMP and none are skipped with their own reason', async () => {
    const root = tempDir();
    const cap = (t: string): [string, Buffer] => ['txt', Buffer.from(t)];
    await writeTarShard(join(root, 'a.tar'), [
      { key: 'jpg', files: [['jpg', jpeg], cap('a jpeg')] },
      { key: 'png', files: [['png', png], cap('a png')] },
      { key: 'gif', files: [['gif', gif], cap('a gif')] },
      { key: 'webp', files: [['webp', webp], cap('a webp')] },
      { key: 'tiff', files: [['tif', tiff], cap('a tiff')] },
      { key: 'misnamed', files: [['image', png], cap('png bytes, no image extension')] },
      { key: 'two', files: [['jpg', jpeg], ['png', png], cap('two images')] },
      { key: 'bmp', files: [['bmp', bmp()], cap('a bmp')] },
      { key: 'none', files: [cap('no image'), ['json', Buffer.from('{"caption":"x"}')]] },
    ]);
    const items = await readAll(descriptorFor('a.tar', 0, 9), root);
    const byKey = Object.fromEntries(items.map((i) => [i.key, i.kind === 'sample' ? 'sample' : i.error.reason]));
    expect(byKey).toEqual({
      jpg: 'sample', png: 'sample', gif: 'sample', webp: 'sample', tiff: 'sample', misnamed: 'sample',
      two: 'multiple_images', bmp: 'unsupported_image', none: 'missing_image',
    });
    const two = items.find((i) => i.key === 'two');
    expect(two?.kind === 'skip' && two.error.message).toMatch(/2 images \(\.jpg, \.png\)/);
  });
});

describe('issue: truncated tars, cut at every kind of boundary', () => {
  // Three samples of two members each (jpg 700 B -> 1024 B padded, txt), then two end-of-archive blocks.
  let whole: Buffer;
  let root: string;
  const member = 512 + 1024, txt = 512 + 512, sample = member + txt;
  beforeAll(async () => {
    root = tempDir();
    await writeTarShard(join(root, 'whole.tar'), [0, 1, 2].map((i) => ({ key: `k${i}`, files: [['jpg', Buffer.alloc(700, i + 1)], ['txt', Buffer.from(`caption ${i}`)]] as Array<[string, Buffer]> })));
    whole = readFileSync(join(root, 'whole.tar'));
  });
  const cut = async (bytes: number) => {
    writeFileSync(join(root, 'cut.tar'), whole.subarray(0, bytes));
    return countTarSamples(join(root, 'cut.tar'));
  };

  test.each([
    ['inside the first header', 100, 0, undefined],
    ['exactly after the first header', 512, 0, 'k0'],
    ['inside a body', 512 + 300, 0, 'k0'],
    ['exactly between two members of one sample', member, 0, 'k0'],
    ['exactly between two samples', sample, 0, 'k0'],
    ['inside the second sample', sample + 600, 1, 'k1'],
    ['exactly after the last member (no end-of-archive blocks)', 3 * sample, 2, 'k2'],
    ['inside the first end-of-archive block', 3 * sample + 256, 2, 'k2'],
  ])('cut %s: the samples before the break are kept, the one at the break is reported', async (_, bytes, complete, partial) => {
    const r = await cut(bytes);
    expect(r.samples).toBe(complete);
    expect(r.break).toBeDefined();
    expect(r.break!.partialKey).toBe(partial);
  });

  test.each([
    ['after one whole end-of-archive block', 3 * sample + 512],
    ['inside the second end-of-archive block', 3 * sample + 768],
    ['not at all', 3 * sample + 1024],
  ])('cut %s: the tar is whole', async (_, bytes) => {
    expect(await cut(bytes)).toEqual({ samples: 3 });
  });

  test('a shard cut after the index was written: one skip stands for every sample of the range it loses', async () => {
    writeFileSync(join(root, 'late.tar'), whole.subarray(0, sample + 600));
    const items = await readAll(descriptorFor('late.tar', 0, 3), root);
    expect(items.map((i) => i.kind)).toEqual(['sample', 'skip']);
    const skip = items[1]!;
    expect(skip.kind === 'skip' && [skip.error.reason, skip.error.samples, skip.key]).toEqual(['truncated_tar', 2, 'k1']);
    // The same shard indexed after the cut: the range ends before the break, nothing more is lost while reading.
    const idx = (await scanDatasets(root)).index.datasets[0]!.shards.find((s) => s.path === 'late.tar')!;
    expect(idx).toMatchObject({ samples: 1, lost: 1 });
    expect((await readAll(descriptorFor('late.tar', 0, 1), root)).map((i) => i.kind)).toEqual(['sample']);
  });

  test('one truncated shard among many: the others are indexed whole, the lost samples named by shard; img2dataset stats give the count', async () => {
    const r = tempDir();
    mkdirSync(join(r, 'shards'));
    writeFileSync(join(r, 'shards', '00000.tar'), whole);
    writeFileSync(join(r, 'shards', '00001.tar'), whole.subarray(0, sample + 600));
    writeFileSync(join(r, 'shards', '00001_stats.json'), JSON.stringify({ count: 4, successes: 3, failed_to_download: 1 }));
    writeFileSync(join(r, 'shards', '00002.tar'), whole.subarray(0, 3 * sample)); // between members, no end blocks
    const notes: string[] = [];
    const { index } = await scanDatasets(r, { onNote: (n) => notes.push(`${n.path}: ${n.message}`) });
    expect(index.datasets[0]!.shards.map((s) => [s.path, s.samples, s.lost ?? 0])).toEqual([
      ['shards/00000.tar', 3, 0], ['shards/00001.tar', 1, 2], ['shards/00002.tar', 2, 1],
    ]);
    expect(index.datasets[0]!.samples).toBe(6);
    expect(notes.join('\n')).toMatch(/00002\.tar.*without its end-of-archive block/);
    expect(describeIndex(index)).toMatch(/3 lost to 2 truncated shard\(s\) \(shards\/00001\.tar: 2, shards\/00002\.tar: 1\)/);
  });

  test('readTarSamples never yields the sample at the break', async () => {
    writeFileSync(join(root, 'mid.tar'), whole.subarray(0, member));
    const keys: string[] = [];
    await expect((async () => { for await (const s of readTarSamples(join(root, 'mid.tar'))) keys.push(s.key); })()).rejects.toThrow(/end-of-archive/);
    expect(keys).toEqual([]);
  });
});

describe('issue: manifests, their line numbers, and one-line log records', () => {
  test('JSONL errors give the line of the file (blank lines counted); caption lists are accepted', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'm.jsonl'), ['', '{"image":"a.jpg","caption":["one","two"]}', '', '   ', '{"image": "b.jpg", ', '{"caption":"no image"}', ''].join('\n'));
    const rows = readManifest(join(dir, 'm.jsonl'), 'jsonl');
    expect(rows).toHaveLength(3);
    expect(rows[0]).toEqual({ ordinal: 0, key: '0', image: 'a.jpg', captions: ['one', 'two'] });
    expect('error' in rows[1]! && rows[1].error).toMatch(/^line 5 is not JSON/);
    expect('error' in rows[2]! && rows[2].error).toMatch(/^line 6 needs a string "image"/);
  });

  test('a log record with a multi-line message stays one line', async () => {
    const { spawnSync } = await import('node:child_process');
    const code = `import { createLogger } from './common/index.ts'; createLogger('t').warn('decoder says', { error: 'VipsJpeg: premature end\\nof input file\\r\\nline 3' });`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: join(import.meta.dirname, '..'), encoding: 'utf8' });
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/premature end\\nof input file\\nline 3/);
  });
});

describe('issue: formats people have', () => {
  let root: string;
  beforeAll(async () => {
    root = tempDir();
    // LAVIS's COCO layout: coco/annotations/coco_karpathy_{train,val,test}.json, images in coco/images/{train,val}2014/.
    mkdirSync(join(root, 'coco', 'annotations'), { recursive: true });
    mkdirSync(join(root, 'coco', 'images', 'train2014'), { recursive: true });
    mkdirSync(join(root, 'coco', 'images', 'val2014'), { recursive: true });
    writeFileSync(join(root, 'coco', 'images', 'train2014', 'COCO_train2014_1.jpg'), jpeg);
    writeFileSync(join(root, 'coco', 'images', 'val2014', 'COCO_val2014_2.jpg'), png);
    writeFileSync(join(root, 'coco', 'annotations', 'coco_karpathy_train.json'), JSON.stringify([
      { image: 'train2014/COCO_train2014_1.jpg', caption: 'A dog on a couch.', image_id: 'coco_1' },
      { image: 'train2014/COCO_train2014_1.jpg', caption: 'A couch with a dog.', image_id: 'coco_1' },
    ]));
    writeFileSync(join(root, 'coco', 'annotations', 'coco_karpathy_val.json'), JSON.stringify([{ image: 'val2014/COCO_val2014_2.jpg', caption: ['A cat.', 'A cat asleep.'] }]));
    writeFileSync(join(root, 'coco', 'annotations', 'coco_karpathy_test.json'), JSON.stringify([{ image: 'val2014/COCO_val2014_2.jpg', caption: ['A cat.'] }]));
    // COCO 2017: annotations/captions_val2017.json with the images in val2017/ beside annotations/.
    mkdirSync(join(root, 'coco2017', 'annotations'), { recursive: true });
    mkdirSync(join(root, 'coco2017', 'val2017'), { recursive: true });
    writeFileSync(join(root, 'coco2017', 'val2017', '000000000139.jpg'), jpeg);
    writeFileSync(join(root, 'coco2017', 'annotations', 'captions_val2017.json'), JSON.stringify({
      images: [{ id: 139, file_name: '000000000139.jpg' }], annotations: [{ id: 5, image_id: 139, caption: 'A room.' }],
    }));
    // img2dataset's WebDataset output: {00000.tar, 00000.parquet, 00000_stats.json}.
    mkdirSync(join(root, 'laion'));
    const meta = (k: string, c: string) => Buffer.from(JSON.stringify({ url: `http://x/${k}.jpg`, caption: c, key: k, status: 'success', width: 40, height: 30 }));
    await writeTarShard(join(root, 'laion', '00000.tar'), [
      { key: '000000000', files: [['jpg', jpeg], ['txt', Buffer.from('a photo')], ['json', meta('000000000', 'a photo')]] },
      { key: '000000001', files: [['jpg', webp], ['txt', Buffer.from('webp bytes in a .jpg')], ['json', meta('000000001', 'webp bytes in a .jpg')]] },
    ]);
    writeFileSync(join(root, 'laion', '00000.parquet'), Buffer.from('PAR1 not read'));
    writeFileSync(join(root, 'laion', '00000_stats.json'), JSON.stringify({ count: 2, successes: 2 }));
    // CSV with a header (img2dataset-style column names) and a JSONL with caption lists.
    mkdirSync(join(root, 'csv', 'img'), { recursive: true });
    writeFileSync(join(root, 'csv', 'img', 'x.gif'), gif);
    writeFileSync(join(root, 'csv', 'pairs.csv'), '\uFEFFfilepath,text\nimg/x.gif,"a gif, with a comma"\n');
    writeFileSync(join(root, 'csv', 'more.jsonl'), '{"image":"img/x.gif","caption":["first","second"]}\n');
  });

  test('Karpathy JSON, COCO 2017, img2dataset WebDataset, CSV and JSONL are indexed, with their splits and image folders', async () => {
    const notes: string[] = [];
    const { index } = await scanDatasets(root, { onNote: (n) => notes.push(`${n.path}: ${n.message}`) });
    const got = Object.fromEntries(index.datasets.map((d) => [d.name, [d.format, d.split ?? null, d.samples, d.imageRoot ?? null]]));
    expect(got).toEqual({
      laion: ['webdataset', 'laion', 2, null],
      'coco-annotations-coco_karpathy_test.json': ['json', 'test', 1, 'coco/images'],
      'coco-annotations-coco_karpathy_train.json': ['json', 'train', 2, 'coco/images'],
      'coco-annotations-coco_karpathy_val.json': ['json', 'val', 1, 'coco/images'],
      'coco2017-annotations-captions_val2017.json': ['coco', 'val', 1, 'coco2017/val2017'],
      'csv-more.jsonl': ['jsonl', null, 1, 'csv'],
      'csv-pairs.csv': ['csv', null, 1, 'csv'],
    });
    expect(notes).toEqual([]);
    // val and test are kept in the index and left out of training when no dataset is named.
    expect(trainingDatasets(index).map((d) => d.name).sort()).toEqual(['coco-annotations-coco_karpathy_train.json', 'csv-more.jsonl', 'csv-pairs.csv', 'laion']);
    expect(describeIndex(index)).toMatch(/^data: 6 samples for training in 4 dataset\(s\); left out of training \(split val\/test, kept for evaluation; name them in data\.datasets to train on them\): coco-annotations-coco_karpathy_test\.json \(1\), .*captions_val2017\.json \(1\)$/);
  });

  test('every one of them reads through decode, transform and tokenizer: all usable', async () => {
    const report = await checkDatasets([root], { imageSize: 32 });
    expect(Object.fromEntries(report.datasets.map((d) => [d.name, [d.usable, Object.keys(d.skipped)]]))).toEqual({
      laion: [2, []],
      'coco-annotations-coco_karpathy_test.json': [1, []],
      'coco-annotations-coco_karpathy_train.json': [2, []],
      'coco-annotations-coco_karpathy_val.json': [1, []],
      'coco2017-annotations-captions_val2017.json': [1, []],
      'csv-more.jsonl': [1, []],
      'csv-pairs.csv': [1, []],
    });
    const train = report.datasets.find((d) => d.name.endsWith('karpathy_train.json'))!;
    expect(train.duplicates).toMatchObject({ sameImage: 1, sameKey: 0 });
    expect(train.imageWidth).toMatchObject({ min: 40, max: 40 });
    expect(train.captionLength).toMatchObject({ unit: 'words', min: 5, max: 5 });
  });

  test('a COCO file whose image folder is nowhere to be found is indexed with a warning naming where it looked', async () => {
    const r = tempDir();
    writeFileSync(join(r, 'captions_train2014.json'), JSON.stringify({ images: [{ id: 1, file_name: 'a.jpg' }], annotations: [{ id: 1, image_id: 1, caption: 'x' }] }));
    const notes: string[] = [];
    const { index } = await scanDatasets(r, { onNote: (n) => notes.push(n.message) });
    expect(index.datasets[0]).toMatchObject({ format: 'coco', imageRoot: 'train2014', split: 'train' });
    expect(notes.join()).toMatch(/image folder not found: none of a\.jpg, … is in train2014, \.\.\/train2014, .*--coco-images/);
  });
});

describe('data check', () => {
  test('reports usable samples, skips by reason with their keys, truncation, duplicate keys', async () => {
    const r = tempDir();
    mkdirSync(join(r, 'w'));
    await writeTarShard(join(r, 'w', '0.tar'), [
      { key: 'a', files: [['jpg', jpeg], ['txt', Buffer.from('one caption here')]] },
      { key: 'b', files: [['jpg', Buffer.concat([jpeg.subarray(0, 60), Buffer.alloc(100)])], ['txt', Buffer.from('corrupt')]] },
      { key: 'c', files: [['jpg', jpeg], ['json', Buffer.from('{}')]] },
      { key: 'a', files: [['png', png], ['txt', Buffer.from('same key again')]] },
      { key: 'e', files: [['jpg', jpeg], ['txt', Buffer.from('cut off')]] },
    ]);
    const whole = readFileSync(join(r, 'w', '0.tar'));
    writeFileSync(join(r, 'w', '0.tar'), whole.subarray(0, whole.length - 1024 - 512)); // into sample e
    const report = await checkDatasets([r], { imageSize: 32 });
    const d = report.datasets[0]!;
    expect([d.samples, d.usable, d.lostToTruncation]).toEqual([4, 2, 1]);
    expect(d.skipped).toEqual({ corrupt_image: { count: 1, keys: ['b'] }, missing_caption: { count: 1, keys: ['c'] } });
    expect(d.duplicates.sameKey).toBe(1);
    expect(d.duplicates.sameImage).toBe(0);
  });
});
