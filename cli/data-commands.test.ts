// `blip2 data synth` and `blip2 data index` through the real command (bin/blip2.js).
import { execFile } from 'node:child_process';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, test, afterAll } from 'vitest';

const tempDirs: string[] = [];
const tempDir = (prefix: string) => { const d = mkdtempSync(join(tmpdir(), prefix)); tempDirs.push(d); return d; };
afterAll(() => { for (const d of tempDirs) rmSync(d, { recursive: true, force: true }); });


const run = promisify(execFile);
const bin = join(import.meta.dirname, '..', 'bin', 'blip2.js');

test('data synth writes shards, tokenizer and index; data index reproduces the index; bad flags are named', async () => {
  const out = tempDir('blip2-cli-');
  const { stdout } = await run(process.execPath, [bin, 'data', 'synth', '--out', out, '--samples', '30', '--shard-size', '10', '--image-size', '32', '--seed', '4']);
  expect(stdout).toMatch(/train: 27 samples in 3 shards/);
  expect(stdout).toMatch(/val: 3 samples in 1 shards/);
  const written = JSON.parse(readFileSync(join(out, 'index.json'), 'utf8'));
  await run(process.execPath, [bin, 'data', 'index', out, '--out', join(out, 'again.json')]);
  expect(JSON.parse(readFileSync(join(out, 'again.json'), 'utf8'))).toEqual(written);
  const help = await run(process.execPath, [bin, 'data', 'index', '--help']);
  expect(help.stdout).toMatch(/Scan DIR for datasets/);
  expect(help.stdout).toMatch(/--coco-images/);
  const bad = await run(process.execPath, [bin, 'data', 'synth', '--out', out, '--samples', 'many']).catch((e: { stderr: string; code: number }) => e);
  expect((bad as { code: number }).code).not.toBe(0);
  expect((bad as { stderr: string }).stderr).toMatch(/--samples must be an integer, got "many"/);
}, 60_000);
