/**
 * `blip2 status` through the real command against the run's nats-server: a job state written into NATS KV as the
 * coordinator writes it (JobStore, compare-and-set) is shown as text and JSON; a job that does not exist exits 2,
 * a NATS server that does not answer exits 1, each with one line and within seconds.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { JobStore, type JobState } from '../coordinator/client';
import { repoRoot } from './helpers/procs';

const bin = join(repoRoot, 'bin', 'blip2.js');
const blip2 = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
const tmp = mkdtempSync(join(tmpdir(), 'blip2-status-'));
const jobId = `status-${process.pid}`;
let nc: NatsConnection;

function state(over: Partial<JobState>): JobState {
  return {
    version: 1, jobId, status: 'running', generation: 3, members: [], world: [], epoch: 1, publishedEpoch: 1,
    epochShards: 4, queueGeneration: 3, committed: null, ledger: { commits: 0, samplesCommitted: 0, shardsAcked: 0 },
    pendingJoin: false, readySince: null, nextJoinSeq: 0, reason: '', ...over,
  };
}

beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await new Kvm(nc).open(`blip2-job-${jobId}`).then((kv) => kv.destroy()).catch(() => undefined);
  await nc.close();
  rmSync(tmp, { recursive: true, force: true });
});

test('status shows the state the coordinator wrote: generation, world, epoch, step, last commit with its age', async () => {
  const checkpointDir = join(tmp, 'checkpoints', 'step-00000012');
  mkdirSync(checkpointDir, { recursive: true });
  writeFileSync(join(checkpointDir, 'checkpoint.json'), JSON.stringify({ step: 12, createdAt: new Date(Date.now() - 90_000).toISOString() }));
  const members = ['trainer-0', 'trainer-1', 'trainer-2'].map((nodeId, i) => ({ nodeId, address: `127.0.0.1:${5000 + i}`, incarnation: `i${i}`, joinSeq: i }));
  const store = await JobStore.open(nc, jobId, { create: true });
  const first = await store.compareAndSet(state({ status: 'waiting', generation: 0 }), 0);
  await store.compareAndSet(state({
    members,
    world: [{ rank: 0, nodeId: 'trainer-1', address: '127.0.0.1:5001' }, { rank: 1, nodeId: 'trainer-0', address: '127.0.0.1:5000' }],
    committed: { step: 12, epoch: 1, checkpointDir, cursors: {}, ackedShards: ['a'], samples: 96 },
    ledger: { commits: 3, samplesCommitted: 96, shardsAcked: 1 },
    reason: 'member trainer-2 lost',
  }), first);
  const config = join(tmp, 'job.json');
  writeFileSync(config, JSON.stringify({ job: { id: jobId }, nats: { url: inject('natsUrl') }, train: { epochs: 3 } }));

  const text = blip2('status', '--config', config);
  expect(text.status, text.stderr).toBe(0);
  expect(text.stdout).toContain(`job ${jobId}: running`);
  expect(text.stdout).toMatch(/generation: +3 \(member trainer-2 lost\)/);
  expect(text.stdout).toMatch(/world: +2 rank\(s\): 0:trainer-1 1:trainer-0; also registered: trainer-2/);
  expect(text.stdout).toMatch(/epoch: +2\/3/);
  expect(text.stdout).toMatch(/step: +12 \(last committed\)/);
  expect(text.stdout).toMatch(new RegExp(`last commit: +step 12 \\(epoch 2\\), ${checkpointDir}, 1m3\\ds ago`));
  expect(text.stdout).toMatch(/committed: +96 samples in 3 commit\(s\)/);

  const json = blip2('status', '--config', config, '--json');
  expect(json.status, json.stderr).toBe(0);
  const report = JSON.parse(json.stdout);
  expect(report).toMatchObject({
    jobId, status: 'running', generation: 3, epoch: 2, epochs: 3, step: 12, members: ['trainer-2'],
    world: [{ rank: 0, nodeId: 'trainer-1' }, { rank: 1, nodeId: 'trainer-0' }],
    committed: { step: 12, epoch: 2, checkpointDir },
  });
  expect(report.committed.ageSeconds).toBeGreaterThanOrEqual(90);
  expect(report.committed.ageSeconds).toBeLessThan(150);

  // --job and --nats.url without a config file; a finished job.
  const rev = (await store.read())!.revision;
  await store.compareAndSet({ ...(await store.read())!.state, status: 'finished', world: [], reason: 'the last epoch is done' }, rev);
  const done = blip2('status', '--job', jobId, '--nats.url', inject('natsUrl'), '--train.epochs', '3');
  expect(done.status, done.stderr).toBe(0);
  expect(done.stdout).toContain(`job ${jobId}: finished`);
  expect(done.stdout).toMatch(/epoch: +3\/3/);
});

test('a job that does not exist exits 2; a NATS server that does not answer exits 1; both with one line, quickly', () => {
  let t0 = Date.now();
  const missing = blip2('status', '--job', 'no-such-job', '--nats.url', inject('natsUrl'));
  expect(missing.status, missing.stderr).toBe(2);
  expect(missing.stderr).toMatch(/^blip2: job no-such-job: no such job on NATS at nats:\/\/[^\n]+ \(no KV bucket blip2-job-no-such-job; give its id with --job\)\n$/);
  expect(missing.stdout).toBe('');
  expect(Date.now() - t0).toBeLessThan(20_000);

  t0 = Date.now();
  const down = blip2('status', '--nats.url', 'nats://127.0.0.1:1');
  expect(down.status, down.stderr).toBe(1);
  expect(down.stderr).toMatch(/^blip2: could not connect to NATS at nats:\/\/127\.0\.0\.1:1: [^\n]+\n$/);
  expect(Date.now() - t0).toBeLessThan(20_000);
});
