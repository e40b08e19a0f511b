// The commands with Hugging Face folders, through the real command (bin/blip2.js): `blip2 export` writes a sharded
// folder and refuses a bad --max-shard-size with one line; `blip2 caption --checkpoint HF_DIR` takes the image side
// from the folder's config.json and the OPT tokenizer from its tokenizer.json.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, expect, test } from 'vitest';
import { writeSafetensors, type SafeTensor } from '../common';
import { initEngine } from '../trainer/engine';
import { HF_INDEX_FILE, paramManifest, presetConfig } from '../trainer/model';
import { paramValues, writeHfModel } from '../test/helpers/hf-model';

const bin = join(import.meta.dirname, '..', 'bin', 'blip2.js');
const blip2 = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });

beforeAll(async () => {
  await initEngine();
});

test('blip2 export: a sharded folder with an index; a bad --max-shard-size exits 2 with one line', () => {
  const config = presetConfig('tiny');
  const values = paramValues(config, 3);
  const dir = mkdtempSync(join(tmpdir(), 'export-cli-'));
  const file = join(dir, 'all.safetensors');
  writeSafetensors(file, new Map(paramManifest(config).map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: values.get(s.name)! } satisfies SafeTensor])));
  const ok = blip2('export', '--checkpoint', file, '--out', join(dir, 'hf'), '--max-shard-size', '50KB');
  expect(ok.status, ok.stderr).toBe(0);
  const m = /exported a stage-2 model: (\d+) tensors \((\d+) frozen as F16\), [\d.]+ MB in (\d+) shard\(s\)/.exec(ok.stdout);
  expect(Number(m?.[1])).toBe(paramManifest(config).length);
  expect(Number(m?.[2])).toBe(paramManifest(config).filter((s) => s.group === 'vision' || s.group === 'language_model').length);
  expect(Number(m?.[3])).toBeGreaterThan(1);
  const index = JSON.parse(readFileSync(join(dir, 'hf', HF_INDEX_FILE), 'utf8')) as { weight_map: Record<string, string> };
  expect(Object.keys(index.weight_map)).toHaveLength(paramManifest(config).length);
  expect(existsSync(join(dir, 'hf', 'config.json'))).toBe(true);
  const bad = blip2('export', '--checkpoint', file, '--out', join(dir, 'x'), '--max-shard-size', 'lots');
  expect(bad.status).toBe(2);
  expect(bad.stderr).toBe('blip2: --max-shard-size must be a size such as 2GB, 500MB or 1000000 (bytes), got "lots"\n');
}, 120_000);

test('blip2 caption --checkpoint HF_DIR: image side from its config.json, the OPT tokenizer from its tokenizer.json', async () => {
  const m = await writeHfModel();
  const image = join(m.dir, '..', 'red.png');
  await sharp({ create: { width: 40, height: 30, channels: 3, background: '#c33' } }).png().toFile(image);
  const r = blip2('caption', image, '--checkpoint', m.dir, '--beam', '1', '--max-length', '4', '--min-length', '1');
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toContain(`stage-2 model from ${m.dir} (config ${join(m.dir, 'config.json')})`);
  expect(r.stdout).toMatch(new RegExp(`^${image}\\t.*\\n$`));
}, 120_000);
