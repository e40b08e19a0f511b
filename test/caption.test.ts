/**
 * `blip2 caption` and `blip2 ask` on real checkpoints, as a user runs them: a short stage-1 job (`blip2 launch`),
 * `blip2 pretrain-lm`, a short stage-2 job from the stage-1 run, then the commands on image files written by sharp
 * and taken from the dataset: one line per image, captions made of the synthetic vocabulary; a stage-1 checkpoint
 * cannot answer; a missing image, a file that is not an image, a missing checkpoint and a stage-2 checkpoint
 * without its language model each exit 2 with a one-line message.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, test } from 'vitest';
import { synthLmVocabulary } from '../dataloader';
import { makeJobDir, repoRoot } from './helpers/procs';

const blip2 = (...args: string[]) => spawnSync(process.execPath, [join(repoRoot, 'bin/blip2.js'), ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 240_000 });
const vocabulary = new Set(synthLmVocabulary());

let stage1 = '';
let stage2 = '';
let dataRoot = '';
let lmFile = '';
const images: string[] = [];
let notImage = '';

beforeAll(async () => {
  // Stage 1, a few steps on one trainer (the job machinery is tested elsewhere; here the checkpoint matters).
  const s1 = await makeJobDir(
    {
      job: { id: `caption-s1-${process.pid}` },
      model: { preset: 'tiny' },
      train: { epochs: 1, batchSizePerTrainer: 8, maxSteps: 3 },
      optim: { lr: 3e-3, warmupSteps: 1 },
      data: { samplesPerShard: 8, workers: 0 },
      world: { trainers: 1, min: 1, max: 1, rendezvousSettleMs: 200 },
    },
    { samples: 32, shardSize: 8, imageSize: 32 },
  );
  stage1 = s1.dir;
  dataRoot = s1.dataRoot;
  let r = blip2('launch', '--config', s1.configFile);
  expect(r.status, r.stdout + r.stderr).toBe(0);
  lmFile = join(s1.dir, 'opt-lm.safetensors');
  // 300 steps: after 50 the LM's first token after the VQA prompt was a special one (an empty answer once generation
  // stopped at the real "\n"; it had run on to 10 tokens before).
  r = blip2('pretrain-lm', '--data', dataRoot, '--steps', '300', '--out', lmFile);
  expect(r.status, r.stdout + r.stderr).toBe(0);
  // Stage 2 from the stage-1 run directory, on the same data.
  stage2 = mkdtempSync(join(tmpdir(), 'blip2-caption-s2-'));
  const config2 = join(stage2, 'job.json');
  writeFileSync(config2, JSON.stringify({
    job: { id: `caption-s2-${process.pid}`, runDir: stage2 },
    model: { preset: 'tiny', checkpoint: stage1, languageModel: lmFile },
    data: { root: dataRoot, datasets: ['train'], samplesPerShard: 8, workers: 0 },
    train: { stage: 2, epochs: 1, batchSizePerTrainer: 8, maxSteps: 3 },
    optim: { lr: 3e-3, warmupSteps: 1 },
    world: { trainers: 1, min: 1, max: 1, rendezvousSettleMs: 200 },
  }));
  r = blip2('launch', '--config', config2);
  expect(r.status, r.stdout + r.stderr).toBe(0);

  // Images: two drawn here (PNG and JPEG, sizes other than the model's), and a file that is not an image.
  const dir = mkdtempSync(join(tmpdir(), 'blip2-caption-img-'));
  const png = join(dir, 'red-square.png');
  await sharp({ create: { width: 48, height: 40, channels: 3, background: { r: 40, g: 40, b: 40 } } })
    .composite([{ input: { create: { width: 20, height: 20, channels: 3, background: { r: 220, g: 30, b: 30 } } }, left: 10, top: 8 }])
    .png().toFile(png);
  const jpg = join(dir, 'blue.jpg');
  await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: 20, g: 40, b: 200 } } }).jpeg().toFile(jpg);
  images.push(png, jpg);
  notImage = join(dir, 'notes.jpg');
  writeFileSync(notImage, 'this is text, not a JPEG\n');
}, 300_000);

/**
 * Every word of a caption is in the synthetic LM's vocabulary (the tokenizers know no other word; the LM's also has
 * the VQA prompt's words, which a stage-2 caption may start with).
 */
function ofVocabulary(text: string): boolean {
  return text.split(/[\s?:]+/).filter((w) => w).every((w) => vocabulary.has(w));
}

describe('blip2 caption', () => {
  test('a stage-2 run directory: one line per image, path, tab, a caption of the vocabulary', () => {
    const r = blip2('caption', ...images, '--checkpoint', stage2);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/stage-2 model from .*step-\d{8}/);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(images.length);
    lines.forEach((line, i) => {
      const [path, caption, ...rest] = line.split('\t');
      expect(path).toBe(images[i]);
      expect(rest).toEqual([]);
      expect(caption!.length).toBeGreaterThan(0);
      expect(ofVocabulary(caption!), caption).toBe(true);
    });
  });

  test('a stage-1 checkpoint directory captions with the ITG head; --json', () => {
    const ckpts = readdirSync(join(stage1, 'checkpoints')).filter((d) => d.startsWith('step-')).sort();
    const r = blip2('caption', images[0]!, '--checkpoint', join(stage1, 'checkpoints', ckpts.at(-1)!), '--json', '--beam', '3');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/stage-1 model/);
    const out = JSON.parse(r.stdout) as { image: string; caption: string }[];
    expect(out).toHaveLength(1);
    expect(out[0]!.image).toBe(images[0]);
    expect(out[0]!.caption.length).toBeGreaterThan(0);
    expect(ofVocabulary(out[0]!.caption), out[0]!.caption).toBe(true);
  });

  test('bad input exits 2 with one line naming it', () => {
    const one = (r: ReturnType<typeof blip2>, pattern: RegExp) => {
      expect(r.status, r.stdout + r.stderr).toBe(2);
      expect(r.stderr).toMatch(pattern);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    };
    one(blip2('caption', join(tmpdir(), 'no-such-image.png'), '--checkpoint', stage2), /^blip2: .*no-such-image\.png: no such image file$/m);
    one(blip2('caption', notImage, '--checkpoint', stage2), /^blip2: .*notes\.jpg: not an image that can be decoded/m);
    one(blip2('caption', images[0]!, '--checkpoint', join(stage2, 'no-such-checkpoint')), /^blip2: --checkpoint .*no-such-checkpoint: no such file or directory$/m);
    // The stage-2 checkpoint alone, away from its run (so nothing names its language model).
    const summary = JSON.parse(readFileSync(join(stage2, 'summary.json'), 'utf8')) as { checkpointDir: string };
    const alone = join(mkdtempSync(join(tmpdir(), 'blip2-caption-alone-')), 'step');
    cpSync(summary.checkpointDir, alone, { recursive: true });
    one(blip2('caption', images[0]!, '--checkpoint', alone, '--data', dataRoot), /^blip2: .*a stage-2 checkpoint needs its frozen language model: give --language-model/m);
    // ... and with it, it captions.
    const r = blip2('caption', images[0]!, '--checkpoint', alone, '--data', dataRoot, '--language-model', lmFile, '--beam', '1');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trimEnd().split('\n')).toHaveLength(1);
  });
});

describe('blip2 ask', () => {
  test('a stage-2 checkpoint answers in the vocabulary; a stage-1 checkpoint is refused', () => {
    const r = blip2('ask', images[0]!, 'what colour is the square?', '--checkpoint', stage2);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]!.length).toBeGreaterThan(0);
    expect(ofVocabulary(lines[0]!), lines[0]).toBe(true);
    const refused = blip2('ask', images[0]!, 'what colour is the square?', '--checkpoint', stage1);
    expect(refused.status, refused.stdout + refused.stderr).toBe(2);
    expect(refused.stderr).toMatch(/^blip2: .*a stage-1 checkpoint cannot answer questions/m);
  });
});
