// `blip2 data index|check|synth` and `blip2 launch` on real-format data through the real command (bin/blip2.js):
// an index written outside the data root, a shard no trainer could read refused before a job starts, annotation
// files that cannot be read named with exit 2, `data check` and its exit statuses, the skips in the launch summary.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { skippedSamples } from './launcher';
import { writeTarShard } from '../dataloader/formats/webdataset';

const bin = join(import.meta.dirname, '..', 'bin', 'blip2.js');
const blip2 = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
const tmp = mkdtempSync(join(tmpdir(), 'blip2-data-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Exit 2 with one `blip2: …` line and no stack trace. */
function expectUsage(r: ReturnType<typeof blip2>, message: RegExp): void {
  expect(r.status, r.stderr).toBe(2);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).toMatch(/^blip2: [^\n]+\n$/);
}

let jpeg: Buffer;
beforeAll(async () => {
  jpeg = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#39c' } }).jpeg().toBuffer();
});

test('data synth into a folder that cannot be created fails at once, exit 2', () => {
  const r = spawnSync(process.execPath, [bin, 'data', 'synth', '--out', '/proc/blip2-x/y', '--samples', '4'], { encoding: 'utf8', timeout: 30_000 });
  expect(r.error).toBeUndefined(); // not killed by the timeout
  expectUsage(r, /cannot create \/proc\/blip2-x\/y: ENOENT at \/proc\/blip2-x/);
});

test('an index written outside the data root resolves from its own folder; a job whose shard is missing is refused before it starts', async () => {
  const data = join(tmp, 'outside', 'data');
  mkdirSync(join(data, 'shards'), { recursive: true });
  await writeTarShard(join(data, 'shards', '00000.tar'), [{ key: 'a', files: [['jpg', jpeg], ['txt', Buffer.from('a caption')]] }]);
  const jobDir = join(tmp, 'outside', 'job');
  mkdirSync(jobDir);
  const r = blip2('data', 'index', data, '--out', join(jobDir, 'index.json'));
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^data: 1 samples for training in 1 dataset\(s\)$/m);
  const index = JSON.parse(readFileSync(join(jobDir, 'index.json'), 'utf8'));
  expect(index.datasets[0].shards[0].path).toBe('../data/shards/00000.tar');
  // `data check` reads through the same paths.
  const check = blip2('data', 'check', join(jobDir, '..', 'data'), '--json', '--image-size', '32');
  expect(check.status, check.stderr).toBe(0);
  expect(JSON.parse(check.stdout)).toMatchObject({ usable: 1, skipped: 0 });
  // The shard moved away: launch refuses the job at once, naming the file (before any process or server starts).
  rmSync(join(data, 'shards', '00000.tar'));
  const config = join(jobDir, 'job.yaml');
  writeFileSync(config, `job: { id: outside-test, runDir: ${join(jobDir, 'run')} }\ndata: { root: ${jobDir} }\nmodel: { preset: tiny }\n`);
  const launch = blip2('launch', '--config', config);
  expect(launch.status, launch.stdout + launch.stderr).toBe(2);
  expect(launch.stderr).toMatch(/index\.json names 1 shard file\(s\) that do not exist: \.\.\/data\/shards\/00000\.tar \(.*\/outside\/data\/shards\/00000\.tar\); paths in an index are relative to its folder/);
  expect(launch.stderr).not.toMatch(/\n\s+at /);
});

test('annotation files that cannot be read are named with exit 2; a Karpathy array is a dataset', () => {
  const coco = join(tmp, 'coco-bad');
  mkdirSync(coco);
  writeFileSync(join(coco, 'captions_train2017.json'), '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "ima');
  expectUsage(blip2('data', 'index', coco), /captions_train2017\.json: not valid JSON \(.*\); is the file truncated\?/);
  const karpathy = join(tmp, 'karpathy');
  mkdirSync(join(karpathy, 'images'), { recursive: true });
  writeFileSync(join(karpathy, 'images', 'x.jpg'), jpeg);
  writeFileSync(join(karpathy, 'coco_karpathy_val.json'), JSON.stringify([{ image: 'x.jpg', caption: ['a', 'b'] }]));
  const ok = blip2('data', 'index', karpathy);
  expect(ok.status, ok.stderr).toBe(0);
  expect(ok.stdout).toMatch(/coco_karpathy_val\.json \(json, split val\): 1 samples/);
  expect(ok.stdout).toMatch(/left out of training \(split val\/test, kept for evaluation; name them in data\.datasets to train on them\): coco_karpathy_val\.json \(1\)/);
  writeFileSync(join(karpathy, 'coco_karpathy_test.json'), '[{"image": "x.jpg", "caption": ');
  expectUsage(blip2('data', 'index', karpathy), /coco_karpathy_test\.json: not valid JSON/);
});

test('missing paths are named with exit 2', () => {
  const karpathy = join(tmp, 'karpathy-2');
  mkdirSync(karpathy);
  expectUsage(blip2('data', 'index', join(tmp, 'nope')), /nope: no such folder/);
  expectUsage(blip2('data', 'index', karpathy, '--out', join(tmp, 'nope', 'index.json')), /--out .*nope\/index\.json: its folder .* does not exist/);
  expectUsage(blip2('data', 'check', join(tmp, 'nope')), /nope: no such file or folder/);
});

test('data check: a text report, --json, exit 1 when nothing is usable', async () => {
  const d = join(tmp, 'check');
  mkdirSync(join(d, 'img'), { recursive: true });
  writeFileSync(join(d, 'img', 'a.jpg'), jpeg);
  writeFileSync(join(d, 'img', 'bad.jpg'), jpeg.subarray(0, 50));
  writeFileSync(join(d, 'm.jsonl'), '{"image":"img/a.jpg","caption":"a blue picture"}\n\n{"image":"img/bad.jpg","caption":"cut"}\nnot json\n');
  const text = blip2('data', 'check', d, '--image-size', '32');
  expect(text.status, text.stderr).toBe(0);
  expect(text.stdout).toMatch(/m\.jsonl \(jsonl\): 3 samples, 1 usable/);
  expect(text.stdout).toMatch(/skipped: +corrupt_image 1 \(1\); bad_manifest_line 1 \(2\)/);
  expect(text.stdout).toMatch(/total: 1 usable, 2 skipped, 0 lost to truncation; caption lengths in words/);
  expect(text.stderr).toMatch(/checked 3\/3 samples/); // plain progress lines when not on a terminal
  const bad = join(tmp, 'check-bad');
  mkdirSync(bad);
  writeFileSync(join(bad, 'm.csv'), 'image,caption\nmissing.jpg,a caption\n');
  const none = blip2('data', 'check', bad, '--json');
  expect(none.status).toBe(1);
  expect(JSON.parse(none.stdout)).toMatchObject({ usable: 0, datasets: [{ name: 'm.csv', skipped: { missing_image: { count: 1, keys: ['0'] } } }] });
  expect(none.stderr).toMatch(/blip2: no usable sample in /);
});

test('the launch summary adds up the skips of every trainer, a restarted one included', () => {
  const run = join(tmp, 'run');
  mkdirSync(run);
  const line = (skipped: object) => JSON.stringify({ step: 1, skipped }) + '\n';
  writeFileSync(join(run, 'metrics-trainer-0.jsonl'), line({}) + line({ corrupt_image: 2 }) + line({ corrupt_image: 3, truncated_tar: 4 }) + line({ corrupt_image: 1 }));
  writeFileSync(join(run, 'metrics-trainer-1.jsonl'), line({ missing_caption: 1 }));
  expect(skippedSamples(run)).toEqual({ corrupt_image: 4, truncated_tar: 4, missing_caption: 1 });
});

