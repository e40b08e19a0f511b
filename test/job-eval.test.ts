/**
 * Evaluation inside a real job: a coordinator and 2 trainers (real processes, NATS, gRPC) on the tiny preset with
 * `eval.tasks` and `eval.intervalSteps`. Rank 0 evaluates the checkpoint it commits at every second step and at
 * `train.maxSteps`; its /metrics carries `blip2_eval_value` / `blip2_eval_baseline`, its JSONL one `kind: "eval"`
 * line per evaluation, the checkpoint folder `eval-val.json`; the other rank evaluates nothing, and both finish.
 * A stage-2 job (LM from `blip2 pretrain-lm`) evaluates captions and VQA once, at the end of its last epoch. A
 * config asking for a task its stage cannot do is refused before anything starts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { createJob, type TestJob } from './helpers/job';
import { exitWithin, repoRoot, waitUntil, type Proc } from './helpers/procs';

let nc: NatsConnection;
let job: TestJob | undefined;
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  for (const p of job?.procs ?? []) p.kill('SIGKILL');
  await nc.drain();
});

interface EvalLine {
  kind: 'eval';
  step: number;
  split: string;
  checkpointDir: string;
  eval: Record<string, Record<string, { value: number; baseline: number }>>;
}
const evalLines = (file: string): EvalLine[] =>
  existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l.includes('"kind":"eval"')).map((l) => JSON.parse(l) as EvalLine) : [];
const portOf = (p: Proc) => waitUntil('a metrics port', () => {
  const m = /metrics at http:\/\/[^:\s]+:(\d+)\/metrics/.exec(p.output());
  return m ? Number(m[1]) : undefined;
}, 60_000);

test('rank 0 evaluates at eval.intervalSteps and at the end; /metrics and the JSONL carry the figures', async () => {
  const j = (job = await createJob({
    nc, natsUrl: inject('natsUrl'), name: 'eval',
    config: {
      model: { preset: 'tiny' },
      train: { epochs: 1, batchSizePerTrainer: 4, maxSteps: 4 },
      optim: { lr: 0.002, warmupSteps: 2 },
      checkpoint: { intervalSteps: 3 }, // the evaluation steps commit too
      data: { samplesPerShard: 8, ackWaitMs: 30_000, workers: 0 },
      world: { min: 2, max: 2, rendezvousSettleMs: 200 },
      membership: { heartbeatMs: 200, timeoutMs: 10_000 },
      metrics: { enabled: true, port: 0 },
      eval: { tasks: ['retrieval', 'caption'], intervalSteps: 2, limit: 3 },
    },
    data: { samples: 40, shardSize: 16 }, // val: 4 images, 3 evaluated
  }));
  const coordinator = j.coordinator();
  const trainers = { a: j.trainer('a'), b: j.trainer('b') };
  const ports = { a: await portOf(trainers.a), b: await portOf(trainers.b) };
  const jsonl = (node: string) => join(j.dir, `metrics-${node}.jsonl`);
  // The first evaluation (step 2): scrape rank 0 while the job still runs.
  const rank0 = await waitUntil('an evaluation line', () => (['a', 'b'] as const).find((n) => evalLines(jsonl(n)).length > 0), 240_000, 100);
  const text = await (await fetch(`http://127.0.0.1:${ports[rank0]}/metrics`)).text();
  const series = (name: string) => new Map([...text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, 'gm'))].map((m) => [m[1]!.replace(/,?(job_id|node)="[^"]*"/g, '').replace(/^,/, ''), Number(m[2])]));
  const values = series('blip2_eval_value');
  const baselines = series('blip2_eval_baseline');
  expect([...values.keys()].sort()).toEqual([
    'task="caption",metric="Bleu_1"', 'task="caption",metric="Bleu_2"', 'task="caption",metric="Bleu_3"', 'task="caption",metric="Bleu_4"', 'task="caption",metric="CIDEr"',
    'task="retrieval",metric="img_r1"', 'task="retrieval",metric="img_r10"', 'task="retrieval",metric="img_r5"', 'task="retrieval",metric="r_mean"',
    'task="retrieval",metric="txt_r1"', 'task="retrieval",metric="txt_r10"', 'task="retrieval",metric="txt_r5"',
    // What the model tells apart on the synthetic captions (beside chance 50).
    ...['axis', 'colour', 'colour_binding', 'relation', 'shape', 'shape_binding', 'size'].map((k) => `task="retrieval",metric="tells_${k}"`),
  ].sort());
  expect(baselines.get('task="retrieval",metric="tells_shape"')).toBe(50);
  // Chance with 3 images of 2 captions each: a text finds its image in the top 1 of 3 with 1/3.
  expect(baselines.get('task="retrieval",metric="img_r1"')).toBeCloseTo(100 / 3, 10);
  expect(baselines.get('task="retrieval",metric="img_r5"')).toBe(100);
  expect(baselines.get('task="retrieval",metric="txt_r1"')).toBeCloseTo(100 * (2 / 6), 10);
  expect(text).toMatch(/^blip2_eval_step\{[^}]*\} 2$/m);

  for (const p of [coordinator, trainers.a, trainers.b]) expect((await exitWithin(p, 240_000)).code, p.output().slice(-3000)).toBe(0);
  const lines = evalLines(jsonl(rank0));
  expect(lines.map((l) => l.step)).toEqual([2, 4]);
  const other = rank0 === 'a' ? 'b' : 'a';
  expect(evalLines(jsonl(other))).toEqual([]);
  for (const l of lines) {
    expect(l.split).toBe('val');
    expect(Object.keys(l.eval).sort()).toEqual(['caption', 'retrieval']);
    expect(l.eval.retrieval!.img_r1!.baseline).toBeCloseTo(100 / 3, 10);
    for (const f of Object.values(l.eval.caption!)) expect(f.value).toBeGreaterThanOrEqual(0);
    // The report beside the checkpoint (the last 3 are kept: steps 2, 3 and 4).
    const report = JSON.parse(readFileSync(join(l.checkpointDir, 'eval-val.json'), 'utf8'));
    expect(report).toMatchObject({ split: 'val', stage: 1, step: l.step, retrieval: { images: 3, texts: 6 }, caption: { images: 3 } });
    expect(report.retrieval.txt_r1).toBe(l.eval.retrieval!.txt_r1!.value);
  }
  expect(values.get('task="retrieval",metric="txt_r1"')).toBe(lines[0]!.eval.retrieval!.txt_r1!.value);
}, 300_000);

test('stage 2: rank 0 evaluates captions and VQA at the end of the last epoch with the frozen LM', async () => {
  for (const p of job?.procs ?? []) p.kill('SIGKILL');
  const j = (job = await createJob({
    nc, natsUrl: inject('natsUrl'), name: 'eval2',
    config: {
      model: { preset: 'tiny' },
      train: { stage: 2, epochs: 1, batchSizePerTrainer: 4 }, // 36 samples: 5 steps
      optim: { lr: 0.002, warmupSteps: 1 },
      checkpoint: { intervalSteps: 5 },
      data: { samplesPerShard: 8, ackWaitMs: 30_000, workers: 0 },
      world: { min: 2, max: 2, rendezvousSettleMs: 200 },
      membership: { heartbeatMs: 200, timeoutMs: 10_000 },
      eval: { tasks: ['caption', 'vqa'], limit: 2 },
    },
    data: { samples: 40, shardSize: 16 },
  }));
  const lm = join(j.dir, 'lm.safetensors');
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'pretrain-lm', '--data', j.dataRoot, '--steps', '5', '--out', lm], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 });
  expect(r.status, r.stdout + r.stderr).toBe(0);
  const procs = [j.coordinator(), j.trainer('a', ['--model.languageModel', lm]), j.trainer('b', ['--model.languageModel', lm])];
  for (const p of procs) expect((await exitWithin(p, 240_000)).code, p.output().slice(-3000)).toBe(0);
  const lines = [...evalLines(join(j.dir, 'metrics-a.jsonl')), ...evalLines(join(j.dir, 'metrics-b.jsonl'))];
  expect(lines.map((l) => l.step)).toEqual([5]); // the last commit (at step 5, checkpoint.intervalSteps) evaluated once
  expect(Object.keys(lines[0]!.eval).sort()).toEqual(['caption', 'vqa']);
  const v = lines[0]!.eval.vqa!.accuracy!;
  expect(v.value).toBeGreaterThanOrEqual(0);
  expect(v.value).toBeLessThanOrEqual(100);
  const report = JSON.parse(readFileSync(join(lines[0]!.checkpointDir, 'eval-val.json'), 'utf8'));
  expect(report).toMatchObject({ stage: 2, step: 5, vqa: { questions: 12 }, caption: { images: 2 } });
  expect(report.vqa.baseline).toBe(v.baseline);
}, 300_000);

test('a config asking for a task its stage cannot do is refused before anything starts', () => {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'launch', '--eval.tasks', 'vqa', '--train.stage', '1'], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
  expect(r.status, r.stderr).toBe(2);
  expect(r.stderr).toMatch(/^blip2: .*eval\.tasks: vqa needs stage 2/);
  const s = spawnSync(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'launch', '--eval.tasks', 'retrieval,caption', '--train.stage', '2'], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
  expect(s.status, s.stderr).toBe(2);
  expect(s.stderr).toMatch(/eval\.tasks: retrieval needs stage 1/);
}, 120_000);
