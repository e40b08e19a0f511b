/**
 * What a real job (coordinator/main.ts and 2 trainer/main.ts processes, gRPC collectives, a real nats-server)
 * serves on its metrics ports: no NaN before the first step; after a commit, the trainers' shard counters, the
 * coordinator's plan and checkpoint age, Node's default metrics, a scrape that `promtool check metrics` passes,
 * `/healthz` and `/readyz`; and every metric the Grafana dashboard queries is in the scrapes.
 */
import { spawnSync } from 'node:child_process';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, expect, inject, test } from 'vitest';
import { dashboardQueries, metricNames } from '../deploy';
import { createJob, type TestJob } from './helpers/job';
import { exitWithin, waitUntil, type Proc } from './helpers/procs';

let nc: NatsConnection;
let current: TestJob | undefined;
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});
afterEach(async (ctx) => {
  if (current && ctx.task.result?.state === 'fail') {
    for (const p of current.procs) process.stderr.write(`--- ${p.label}\n${p.output().slice(-4000)}\n`);
  }
  for (const p of current?.procs ?? []) p.kill('SIGKILL');
  current = undefined;
});

/** The metrics port a process logged ("metrics at http://host:port/metrics"). */
const portOf = (p: Proc) => waitUntil(`the metrics port of ${p.label.split(' ')[0]}`, () => {
  const m = /metrics at http:\/\/[^:\s]+:(\d+)\/metrics/.exec(p.output());
  return m ? Number(m[1]) : undefined;
}, 120_000, 50);

const get = async (port: number, path: string) => {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, text: await r.text() };
};

/** name{labels} -> value for every sample of a scrape. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}
const names = (text: string) => new Set([...samples(text).keys()].map((k) => k.split('{')[0]!));
/** The value of the one sample of `name` (any labels). */
function one(text: string, name: string): number {
  const found = [...samples(text)].filter(([k]) => k.split('{')[0] === name);
  if (found.length !== 1) throw new Error(`${name}: ${found.length} samples in the scrape`);
  return found[0]![1];
}

const hasPromtool = spawnSync('promtool', ['--version']).status === 0;

test('a real job: true metrics, no NaN before the first step, probes, a clean promtool lint, every dashboard metric scraped', async () => {
  const j = (current = await createJob({
    nc, natsUrl: inject('natsUrl'), name: 'obs',
    config: {
      model: { preset: 'tiny' },
      train: { epochs: 2, batchSizePerTrainer: 4 },
      optim: { lr: 0.002, warmupSteps: 2 },
      checkpoint: { intervalSteps: 2 },
      data: { samplesPerShard: 8, ackWaitMs: 30_000, workers: 1 },
      world: { min: 2, max: 2, rendezvousSettleMs: 200 },
      membership: { heartbeatMs: 200, timeoutMs: 10_000 },
      metrics: { enabled: true, port: 0 },
      eval: { tasks: ['retrieval', 'caption'], intervalSteps: 2, limit: 2 }, // the dashboard's evaluation panels
    },
    data: { samples: 40, shardSize: 16 }, // train: 36 samples, 5 descriptors per epoch
  }));
  const coordinator = j.coordinator();
  const trainers = [j.trainer('a'), j.trainer('b')];
  const cPort = await portOf(coordinator);
  const tPorts = await Promise.all(trainers.map(portOf));

  // Before the first step: steps_total 0, no loss series, no NaN anywhere; not ready until holding a generation.
  const early = await get(tPorts[0]!, '/metrics');
  if (one(early.text, 'blip2_trainer_steps_total') === 0) {
    expect(early.text).not.toMatch(/^blip2_trainer_loss\{/m);
  }
  expect(early.text).not.toMatch(/ NaN$/m);
  const readyStates = new Set<number>();
  const watchReady = setInterval(() => void get(tPorts[1]!, '/readyz').then((r) => readyStates.add(r.status), () => undefined), 100);

  // After the second commit (the job still running): scrape every process.
  await waitUntil('a second commit', async () => ((await j.state())?.committed?.step ?? 0) >= 4, 180_000, 100);
  clearInterval(watchReady);
  const scrapes = await Promise.all([cPort, ...tPorts].map((p) => get(p, '/metrics')));
  const [cText, ...tTexts] = scrapes.map((s) => s.text) as [string, ...string[]];
  expect(scrapes.every((s) => s.status === 200)).toBe(true);

  // 1. The trainers' shard counters move, and add up on each trainer: leased = acked + nacked + held.
  let leased = 0, acked = 0;
  for (const t of tTexts) {
    const v = (n: string) => one(t, `blip2_trainer_data_${n}`);
    expect(v('shards_leased_total')).toBe(v('shards_acked_total') + v('shards_nacked_total') + v('shards_held'));
    expect(v('shards_redelivered_total')).toBe(0);
    // One series per reason, each at 0.
    const rejected = [...samples(t)].filter(([k]) => k.startsWith('blip2_trainer_data_descriptors_rejected_total{'));
    expect(rejected.length).toBe(2);
    expect(rejected.every(([, n]) => n === 0)).toBe(true);
    leased += v('shards_leased_total');
    acked += v('shards_acked_total');
  }
  expect(leased).toBeGreaterThanOrEqual(2);
  expect(acked).toBeGreaterThanOrEqual(1);
  // The plan (progress, ETA) and the commit's age, on the coordinator.
  expect(one(cText, 'blip2_coordinator_epochs_planned')).toBe(2);
  expect(one(cText, 'blip2_coordinator_epoch_samples')).toBe(36);
  expect(one(cText, 'blip2_coordinator_samples_planned')).toBe(72);
  expect(one(cText, 'blip2_coordinator_steps_planned')).toBe(10); // 2 x ceil(36 / (4 x 2))
  expect(one(cText, 'blip2_coordinator_world_min')).toBe(2);
  const age = one(cText, 'blip2_coordinator_checkpoint_age_seconds');
  expect(age).toBeGreaterThanOrEqual(0);
  expect(age).toBeLessThan(120);
  expect(Math.abs(one(cText, 'blip2_coordinator_last_commit_timestamp_seconds') - (Date.now() / 1000 - age))).toBeLessThan(5);
  // Node's default metrics under their usual names; losses are numbers.
  for (const text of scrapes.map((s) => s.text)) {
    for (const n of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_seconds']) {
      expect(names(text).has(n), n).toBe(true);
    }
    expect(text).not.toMatch(/^blip2_(process|nodejs)_/m);
  }
  for (const t of tTexts) for (const [k, v] of samples(t)) if (k.startsWith('blip2_trainer_loss{')) expect(Number.isFinite(v), k).toBe(true);

  // The scrape passes promtool's lint (skipped only without promtool; CI installs it).
  if (hasPromtool) {
    for (const s of scrapes) {
      const r = spawnSync('promtool', ['check', 'metrics'], { input: s.text, encoding: 'utf8' });
      expect(`${r.stdout}${r.stderr}`).toBe('');
      expect(r.status).toBe(0);
    }
  } else {
    process.stderr.write('promtool not found: the metrics lint of this test was skipped\n');
  }

  // 2. Probes: healthy and ready while training; a trainer was not ready before it held a generation.
  for (const p of [cPort, ...tPorts]) {
    const h = await get(p, '/healthz');
    expect(h.status, h.text).toBe(200);
    const r = await get(p, '/readyz');
    expect(r.status, r.text).toBe(200);
  }
  expect((await get(tPorts[0]!, '/readyz')).text).toMatch(/^ok: generation \d+, rank [01] of 2/);
  expect(readyStates.has(200)).toBe(true);
  expect(readyStates.has(503)).toBe(true);

  // 4. Every metric a dashboard panel queries is in the scrapes of the job's processes.
  const scraped = new Set(scrapes.flatMap((s) => [...names(s.text)]));
  const missing = dashboardQueries().flatMap((q) => metricNames(q.expr).filter((n) => !scraped.has(n)).map((n) => `${q.panel}: ${n}`));
  expect(missing).toEqual([]);
  expect(scraped.has('blip2_coordinator_generation')).toBe(true); // the job variable's query

  for (const [name, p] of [['a', trainers[0]!], ['b', trainers[1]!], ['coordinator', coordinator]] as const) {
    expect((await exitWithin(p, 180_000, name)).code, p.output().slice(-3000)).toBe(0);
  }
});
