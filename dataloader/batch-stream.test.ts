// The batch stream over the synthetic dataset: every sample once per epoch, shapes, seeded augmentation, resumption
// from cursors, bad samples skipped.
import { cpSync, mkdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { Registry } from 'prom-client';
import { beforeAll, describe, expect, test, afterAll } from 'vitest';
import { createBatchStream, localShardSource, swapLeftRight, type Batch, type ShardLease } from './batch-stream';
import { buildIndex, loadIndex, type DatasetIndex } from './dataset-index';
import type { ShardDescriptor } from './descriptor';
import { writeTarShard } from './formats/webdataset';
import { dataSkipCounts } from './metrics';
import { SampleLedger } from './ledger';
import { planEpoch } from './plan';
import { writeSynthDataset } from './synth';
import { CaptionTokenizer } from './tokenizer';

const tempDirs: string[] = [];
const tempDir = (prefix: string) => { const d = mkdtempSync(join(tmpdir(), prefix)); tempDirs.push(d); return d; };
afterAll(() => { for (const d of tempDirs) rmSync(d, { recursive: true, force: true }); });


const SIDE = 16;

async function collect<L extends ShardLease>(stream: AsyncIterable<Batch<L>>): Promise<Batch<L>[]> {
  const out: Batch<L>[] = [];
  for await (const b of stream) out.push(b);
  return out;
}

async function skipped(registry: Registry): Promise<Record<string, number>> {
  const m = await registry.getSingleMetric('blip2_trainer_data_samples_skipped_total')!.get();
  return Object.fromEntries(m.values.map((v) => [String(v.labels.reason), v.value]));
}

describe('batch stream over the synthetic dataset', () => {
  const root = tempDir('blip2-bs-');
  let index: DatasetIndex;
  let tokenizer: CaptionTokenizer;
  let trainIds: string[];
  beforeAll(async () => {
    await writeSynthDataset({ out: root, samples: 50, shardSize: 12, imageSize: 40, seed: 5 });
    index = loadIndex(join(root, 'index.json'));
    tokenizer = CaptionTokenizer.fromFile(join(root, 'tokenizer.json'));
    trainIds = [];
    for (const s of index.datasets[0]!.shards) {
      const first = Number(s.path === 'train/00000.tar' ? 0 : Number(s.path.slice(6, 11)) * 12);
      for (let i = 0; i < s.samples; i++) trainIds.push(`train/${s.path}/${String(first + i).padStart(9, '0')}`);
    }
  });

  test('an epoch yields every training sample once, with tensors of the promised shapes', async () => {
    const registry = new Registry();
    const plan = planEpoch({ index, epoch: 0, seed: 5 });
    const batches = await collect(createBatchStream({
      source: localShardSource(plan), dataRoot: root, tokenizer, batchSize: 8, workers: 2, prefetch: 6,
      transform: { imageSize: SIDE }, registry,
    }));
    const ledger = new SampleLedger();
    for (const b of batches) {
      ledger.record(0, b.sampleIds);
      expect(b.pixelValues).toHaveLength(b.batchSize * 3 * SIDE * SIDE);
      expect(b.inputIds).toHaveLength(b.batchSize * 32);
      expect(b.attentionMask).toHaveLength(b.batchSize * 32);
      for (let r = 0; r < b.batchSize; r++) {
        expect(b.inputIds[r * 32]).toBe(tokenizer.bosTokenId);
        expect(tokenizer.decode(b.inputIds.slice(r * 32, (r + 1) * 32))).toBe(b.captions[r]);
      }
      expect(Number.isFinite(b.pixelValues.reduce((a, v) => a + v, 0))).toBe(true);
    }
    expect(batches.slice(0, -1).every((b) => b.batchSize === 8)).toBe(true);
    expect(ledger.check(0, trainIds)).toMatchObject({ ok: true });
    // Every descriptor is reported completed exactly once, in some batch.
    expect(batches.flatMap((b) => b.completed.map((l) => l.descriptor.id)).sort()).toEqual(plan.map((d) => d.id).sort());
    expect((await registry.getSingleMetric('blip2_trainer_data_samples_total')!.get()).values[0]!.value).toBe(45);
  });

  test('the same epoch and seed give the same pixels; flipped captions swap left and right', async () => {
    const run = () => collect(createBatchStream({
      source: localShardSource(planEpoch({ index, epoch: 1, seed: 5 })), dataRoot: root, tokenizer, batchSize: 45, workers: 1,
      transform: { imageSize: SIDE },
    }));
    const [a, b] = [await run(), await run()];
    expect(a[0]!.sampleIds).toEqual(b[0]!.sampleIds);
    expect(Buffer.compare(Buffer.from(a[0]!.pixelValues.buffer), Buffer.from(b[0]!.pixelValues.buffer))).toBe(0);
    expect(swapLeftRight('a red circle to the left of a blue square right')).toBe('a red circle to the right of a blue square left');
  });

  test('a stream stopped after a checkpoint resumes from its cursors: every sample once across both runs', async () => {
    const plan = planEpoch({ index, epoch: 2, seed: 5, shardSizeSamples: 7 });
    const first = createBatchStream({ source: localShardSource(plan), dataRoot: root, tokenizer, batchSize: 5, workers: 1, transform: { imageSize: SIDE } });
    const ledger = new SampleLedger();
    const cursors = new Map<string, number>();
    const done = new Set<string>();
    let n = 0;
    for await (const b of first) {
      ledger.record(2, b.sampleIds);
      for (const c of b.cursors) cursors.set(c.descriptorId, c.nextOrdinal);
      for (const l of b.completed) done.add(l.descriptor.id);
      if (++n === 3) break; // the checkpoint after batch 3 commits; the process stops
    }
    expect(done.size).toBeGreaterThan(0);
    expect([...cursors.keys()].some((id) => !done.has(id))).toBe(true); // a shard was left part-way
    const rest = plan.filter((d) => !done.has(d.id));
    const second = createBatchStream({
      source: localShardSource(rest, (d: ShardDescriptor) => cursors.get(d.id)), dataRoot: root, tokenizer, batchSize: 5, workers: 1, transform: { imageSize: SIDE },
    });
    for await (const b of second) ledger.record(2, b.sampleIds);
    expect(ledger.check(2, trainIds)).toMatchObject({ ok: true, missing: [], duplicates: [] });
  });
});

describe('bad input: skipped, counted and logged; the rest of the shard is used', () => {
  const root = tempDir('blip2-bad-');
  let tokenizer: CaptionTokenizer;
  let jpeg: Buffer;
  beforeAll(async () => {
    await writeSynthDataset({ out: join(root, 'synth'), samples: 12, shardSize: 100, imageSize: 32, seed: 1 });
    tokenizer = CaptionTokenizer.fromFile(join(root, 'synth', 'tokenizer.json'));
    jpeg = await sharp({ create: { width: 24, height: 20, channels: 3, background: '#3366aa' } }).jpeg().toBuffer();
    const corrupt = Buffer.concat([jpeg.subarray(0, 40), Buffer.alloc(200, 7)]);
    mkdirSync(join(root, 'wds'));
    await writeTarShard(join(root, 'wds', '00000.tar'), [
      { key: 'good1', files: [['jpg', jpeg], ['txt', Buffer.from('A blue Picture.')]] },
      { key: 'corrupt', files: [['jpg', corrupt], ['txt', Buffer.from('broken')]] },
      { key: 'nocaption', files: [['jpg', jpeg], ['json', Buffer.from('{"width":24}')]] },
      { key: 'longcaption', files: [['jpg', jpeg], ['txt', Buffer.from('word '.repeat(1000))]] },
      { key: 'noimage', files: [['txt', Buffer.from('a caption without an image')], ['json', Buffer.from('{}')]] },
      { key: 'good2', files: [['jpg', jpeg], ['json', Buffer.from('{"caption":"caption from json"}')]] },
    ]);
    // A truncated tar: the synthetic train shard cut in the middle of its sixth sample's image.
    mkdirSync(join(root, 'trunc'));
    const whole = readFileSync(join(root, 'synth', 'train', '00000.tar'));
    let cut = 0;
    for (let off = 0, n = 0; off < whole.length; n++) {
      const size = parseInt(whole.subarray(off + 124, off + 136).toString().replace(/\0.*$/, '').trim() || '0', 8);
      if (n === 15) { cut = off + 512 + (size >> 1); break; } // entry 15 = sample 5's jpg (3 files a sample)
      off += 512 + Math.ceil(size / 512) * 512;
    }
    writeFileSync(join(root, 'trunc', '00000.tar'), whole.subarray(0, cut));
    mkdirSync(join(root, 'images'));
    writeFileSync(join(root, 'images', 'a.jpg'), jpeg);
    writeFileSync(join(root, 'manifest.jsonl'), [
      JSON.stringify({ image: 'images/a.jpg', caption: 'first line' }),
      '{"image": "images/a.jpg", "caption": ',
      JSON.stringify({ image: 'images/missing.jpg', caption: 'no such file' }),
      JSON.stringify({ image: 'images/a.jpg', captions: ['one of', 'two captions'] }),
      JSON.stringify({ image: 'images/a.jpg', caption: '   ' }),
    ].join('\n') + '\n');
    writeFileSync(join(root, 'manifest.csv'), 'image,caption,caption_2\nimages/a.jpg,"a csv caption",\nimages/a.jpg,too,many,columns\nimages/a.jpg,,"second caption only"\n');
    mkdirSync(join(root, 'coco', 'val2017'), { recursive: true });
    writeFileSync(join(root, 'coco', 'val2017', '000001.jpg'), jpeg);
    writeFileSync(join(root, 'coco', 'captions_val2017.json'), JSON.stringify({
      images: [{ id: 1, file_name: '000001.jpg' }, { id: 2, file_name: '000002.jpg' }],
      annotations: [{ id: 10, image_id: 1, caption: 'A COCO caption.' }, { id: 11, image_id: 2, caption: 'image file missing' }, { id: 12, image_id: 99, caption: 'unknown image id' }],
    }));
  });

  test('every format and every kind of bad sample', async () => {
    const index: DatasetIndex = {
      version: 1,
      datasets: [
        { name: 'wds', format: 'webdataset', samples: 6, shards: [{ path: 'wds/00000.tar', samples: 6, bytes: 0 }] },
        { name: 'trunc', format: 'webdataset', samples: 10, shards: [{ path: 'trunc/00000.tar', samples: 10, bytes: 0 }] },
        { name: 'jl', format: 'jsonl', imageRoot: '.', samples: 5, shards: [{ path: 'manifest.jsonl', samples: 5, bytes: 0 }] },
        { name: 'csv', format: 'csv', imageRoot: '.', samples: 3, shards: [{ path: 'manifest.csv', samples: 3, bytes: 0 }] },
        { name: 'coco', format: 'coco', imageRoot: 'coco/val2017', samples: 3, shards: [{ path: 'coco/captions_val2017.json', samples: 3, bytes: 0 }] },
      ],
    };
    const registry = new Registry();
    const batches = await collect(createBatchStream({
      source: localShardSource(planEpoch({ index, epoch: 0, seed: 0 })), dataRoot: root, tokenizer, batchSize: 4, workers: 1,
      transform: { imageSize: SIDE }, registry,
    }));
    const got = new Map(batches.flatMap((b) => b.sampleIds.map((id, i) => [id, b.captions[i]] as const)));
    const trunc = [0, 1, 2, 3, 4].map((i) => `trunc/trunc/00000.tar/${String(i).padStart(9, '0')}`);
    expect([...got.keys()].sort()).toEqual([
      'coco/coco/captions_val2017.json/10',
      'csv/manifest.csv/0', 'csv/manifest.csv/2',
      'jl/manifest.jsonl/0', 'jl/manifest.jsonl/3',
      ...trunc,
      'wds/wds/00000.tar/good1', 'wds/wds/00000.tar/good2',
    ].sort());
    expect(got.get('wds/wds/00000.tar/good1')).toBe('a blue picture');
    expect(got.get('wds/wds/00000.tar/good2')).toBe('caption from json');
    expect(got.get('csv/manifest.csv/2')).toBe('second caption only');
    expect(['one of', 'two captions']).toContain(got.get('jl/manifest.jsonl/3'));
    expect(got.get('coco/coco/captions_val2017.json/10')).toBe('a coco caption');
    expect(await skipped(registry)).toEqual({
      corrupt_image: 1,
      missing_caption: 2, // wds nocaption, jsonl blank caption
      caption_too_long: 1,
      missing_image: 4, // wds noimage, jsonl missing file, coco missing file, coco unknown image id
      bad_manifest_line: 2, // jsonl not JSON, csv column count
      truncated_tar: 5, // samples 5..9 of the range: every sample lost counts
      // Every reason's series exists from the start (at 0), so dashboards and alerts see them all.
      multiple_images: 0,
      unsupported_image: 0,
    });
    // The same counts for the trainer's metrics JSONL (which lists the reasons that happened).
    expect(dataSkipCounts(registry)).toEqual(Object.fromEntries(Object.entries(await skipped(registry)).filter(([, n]) => n > 0)));
    // Every descriptor still completes, so the loop can ack it.
    expect(batches.flatMap((b) => b.completed).length).toBe(5);
  });

  test('`data index` indexes a truncated tar up to its break and records what is lost', async () => {
    const idx = await buildIndex(join(root, 'trunc'));
    expect(idx.datasets[0]!.shards[0]).toMatchObject({ samples: 5, lost: 1, problem: expect.stringMatching(/breaks off/) });
  });

  test('`data index` finds manifests and COCO files', async () => {
    const other = tempDir('blip2-idx-');
    for (const p of ['manifest.jsonl', 'manifest.csv', 'images', 'coco', 'wds']) cpSync(join(root, p), join(other, p), { recursive: true });
    const idx = await buildIndex(other);
    const byName = Object.fromEntries(idx.datasets.map((d) => [d.name, [d.format, d.samples, d.imageRoot ?? null, d.shards.map((s) => s.path)]]));
    expect(byName).toEqual({
      wds: ['webdataset', 6, null, ['wds/00000.tar']],
      'manifest.jsonl': ['jsonl', 5, '.', ['manifest.jsonl']],
      'manifest.csv': ['csv', 3, '.', ['manifest.csv']],
      'coco-captions_val2017.json': ['coco', 3, 'coco/val2017', ['coco/captions_val2017.json']],
    });
  });
});
