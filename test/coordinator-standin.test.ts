/**
 * The coordinator process against trainer stand-ins (test/fixtures/standin-trainer.ts): real processes that speak
 * the membership protocol and pull shard descriptors from JetStream like trainers, with the model replaced by a
 * sleep. Real nats-server, real SIGKILLs. Covers rendezvous, commits, epochs, the end of the job, a lost rank 0
 * and its replacement, a coordinator restart, the job token and config errors.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, inject, test } from 'vitest';
import { connectJobNats, loadJobConfig } from '../common';
import { JobMember, JobStore, type JobState } from '../coordinator/client';
import { loadIndex, planEpoch, sampleId, SampleLedger } from '../dataloader';
import { freePort } from './setup/nats';
import { exitWithin, makeJobDir, runTs, waitUntil, type JobDir, type Proc } from './helpers/procs';

let nc: NatsConnection;
const procs: Proc[] = [];
let jobNo = 0;

beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});
afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail') {
    for (const p of procs) process.stderr.write(`--- ${p.label}\n${p.output().slice(-3000)}\n`);
  }
  for (const p of procs.splice(0)) p.kill('SIGKILL');
});

interface Job extends JobDir {
  jobId: string;
  metricsPort: number;
  coordinator(): Proc;
  trainer(nodeId: string, stepMs: number, extra?: string[]): Proc;
  state(): Promise<JobState | null>;
}

async function job(): Promise<Job> {
  const jobId = `standin-${process.pid}-${jobNo++}`;
  const metricsPort = await freePort();
  const dir = await makeJobDir(
    {
      job: { id: jobId, token: 'right-token' },
      nats: { url: inject('natsUrl') },
      train: { epochs: 2, batchSizePerTrainer: 4 },
      data: { samplesPerShard: 8, ackWaitMs: 1500 },
      world: { min: 1, max: 4, rendezvousSettleMs: 400 },
      membership: { heartbeatMs: 100, timeoutMs: 1200 },
      metrics: { enabled: false },
      log: { level: 'info' },
    },
    { samples: 40, shardSize: 12 }, // train: 36 samples in 3 tar shards -> 6 descriptors of <= 8 samples per epoch
  );
  let store: JobStore | undefined;
  return {
    ...dir,
    jobId,
    metricsPort,
    coordinator() {
      const p = runTs('coordinator/main.ts', ['--config', dir.configFile, '--metrics.enabled', 'true', '--metrics.port', String(metricsPort)]);
      procs.push(p);
      return p;
    },
    trainer(nodeId, stepMs, extra = []) {
      const p = runTs('test/fixtures/standin-trainer.ts', ['--config', dir.configFile, ...extra], { BLIP2_NODE_ID: nodeId, STANDIN_STEP_MS: String(stepMs) });
      procs.push(p);
      return p;
    },
    async state() {
      try {
        store ??= await JobStore.open(nc, jobId);
        return (await store.read())?.state ?? null;
      } catch {
        store = undefined; // the coordinator has not created the bucket yet
        return null;
      }
    },
  };
}

/** Every sample of every epoch in the final committed checkpoint exactly once. */
function checkLedger(j: Job, s: JobState, epochs: number): void {
  const ledger = JSON.parse(readFileSync(join(s.committed!.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
  const index = loadIndex(join(j.dataRoot, 'index.json'));
  const l = new SampleLedger();
  for (let e = 0; e < epochs; e++) {
    const expected = planEpoch({ index, datasets: ['train'], epoch: e, seed: 42, shardSizeSamples: 8 })
      .flatMap((d) => Array.from({ length: d.end - d.start }, (_, k) => sampleId(d, String(d.start + k))));
    expect(expected).toHaveLength(36);
    l.record(e, ledger[e] ?? []);
    const check = l.check(e, expected);
    expect(check, `epoch ${e}`).toEqual({ ok: true, missing: [], duplicates: [], unexpected: [] });
  }
  expect(s.committed!.samples).toBe(36 * epochs);
}

const metric = async (port: number, name: string): Promise<number | undefined> => {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text(), () => '');
  const m = new RegExp(`^${name}(\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[2]) : undefined;
};

describe('coordinator with trainer stand-ins', () => {
  test('two members train two epochs to the end; every sample is committed once per epoch', async () => {
    const j = await job();
    const c = j.coordinator();
    const a = j.trainer('a', 10);
    const b = j.trainer('b', 10);
    await waitUntil('a world of 2', async () => (await j.state())?.world.length === 2, 30_000);
    expect(await waitUntil('coordinator metrics', () => metric(j.metricsPort, 'blip2_coordinator_world_size'), 10_000)).toBe(2);
    for (const [name, p] of [['a', a], ['b', b], ['coordinator', c]] as const) {
      expect((await exitWithin(p, 60_000, name)).code, p.output().slice(-3000)).toBe(0);
    }
    const s = (await j.state())!;
    expect(s).toMatchObject({ status: 'finished', epoch: 1, generation: 1 });
    expect(s.ledger.commits).toBe(12);
    expect(s.ledger.shardsAcked).toBe(12);
    checkLedger(j, s, 2);
  });

  test('rank 0 SIGKILLed mid-epoch: the survivor continues, a replacement is taken in, the ledger stays exactly-once', async () => {
    const j = await job();
    j.coordinator();
    const members = new Map([['a', j.trainer('a', 60)], ['b', j.trainer('b', 60)]]);
    await waitUntil('two commits', async () => ((await j.state())?.committed?.step ?? 0) >= 3, 30_000);
    const before = (await j.state())!;
    expect(before.world).toHaveLength(2);
    const victim = before.world[0]!.nodeId;
    const survivor = before.world[1]!.nodeId;
    members.get(victim)!.kill('SIGKILL');
    const afterLoss = await waitUntil('a generation without the victim', async () => {
      const s = await j.state();
      return s && s.generation > before.generation && s.world.length === 1 ? s : null;
    }, 15_000);
    expect(afterLoss.world[0]!.nodeId).toBe(survivor);
    expect(afterLoss.reason).toMatch(new RegExp(`node ${victim} lost: no heartbeat`));
    expect(await waitUntil('world size metric 1', async () => (await metric(j.metricsPort, 'blip2_coordinator_world_size')) === 1, 5000)).toBe(true);
    const stepAtLoss = afterLoss.committed?.step ?? 0;
    await waitUntil('the survivor commits on its own', async () => ((await j.state())?.committed?.step ?? 0) > stepAtLoss, 20_000);
    const c = j.trainer('c', 60);
    const withC = await waitUntil('the replacement in the world', async () => {
      const s = await j.state();
      return s && s.world.some((p) => p.nodeId === 'c') ? s : null;
    }, 20_000);
    expect(withC.world.map((p) => p.nodeId)).toEqual([survivor, 'c']);
    expect(withC.reason).toMatch(/taking in 1 new member/);
    expect((await exitWithin(members.get(survivor)!, 90_000, survivor)).code).toBe(0);
    expect((await exitWithin(c, 30_000, 'c')).code).toBe(0);
    const s = (await j.state())!;
    expect(s.status).toBe('finished');
    checkLedger(j, s, 2);
  });

  test('the coordinator SIGKILLed and restarted mid-job: the job continues from KV and finishes', async () => {
    const j = await job();
    let c = j.coordinator();
    const a = j.trainer('a', 40);
    const b = j.trainer('b', 40);
    await waitUntil('two commits', async () => ((await j.state())?.committed?.step ?? 0) >= 2, 30_000);
    c.kill('SIGKILL');
    await c.exited;
    const frozen = (await j.state())!;
    await new Promise((r) => setTimeout(r, 700));
    c = j.coordinator();
    expect((await exitWithin(a, 60_000, 'a')).code, a.output().slice(-3000)).toBe(0);
    expect((await exitWithin(b, 30_000, 'b')).code).toBe(0);
    expect((await exitWithin(c, 30_000, 'coordinator')).code).toBe(0);
    expect(c.output()).toMatch(/job state recovered from KV/);
    const s = (await j.state())!;
    expect(s.status).toBe('finished');
    expect(s.generation).toBe(frozen.generation); // heartbeats were not lost: no member was dropped
    checkLedger(j, s, 2);
  });

  test('a member with a wrong job token is refused with a clear error', async () => {
    const j = await job();
    j.coordinator();
    const bad = j.trainer('intruder', 10, ['--job.token', 'wrong-token']);
    const { code } = await exitWithin(bad, 30_000, 'intruder');
    expect(code).toBe(2);
    expect(bad.output()).toMatch(new RegExp(`job ${j.jobId} refused join from node "intruder": the job token does not match`));
    expect(bad.output()).not.toContain('right-token');
    expect((await j.state())!.members).toEqual([]);
  });

  test('a bad config stops the coordinator with the key, the value and the rule', async () => {
    const j = await job();
    const p = runTs('coordinator/main.ts', ['--config', j.configFile, '--train.epochs', '0', '--world.min', 'two']);
    procs.push(p);
    expect((await exitWithin(p, 30_000)).code).toBe(2);
    expect(p.output()).toMatch(/train\.epochs: must be an integer >= 1: value was 0/);
    expect(p.output()).toMatch(/world\.min: must be an integer >= 1: value was "two"/);
    const q = runTs('coordinator/main.ts', ['--config', j.configFile, '--train.epochz', '1']);
    procs.push(q);
    expect((await exitWithin(q, 30_000)).code).toBe(2);
    expect(q.output()).toMatch(/config flag "--train\.epochz": unknown key/);
  });
});

describe('heartbeats', () => {
  const busy = (ms: number) => {
    const end = Date.now() + ms;
    while (Date.now() < end); // a long synchronous step, as a tfjs forward/backward on CPU
  };

  test.each([
    [true, 'keep beating from a worker thread while the main thread is busy'],
    [false, 'stop while the main thread is busy when sent from it, and the member is declared lost'],
  ])('worker=%s: heartbeats %s', async (worker) => {
    const j = await job();
    const c = j.coordinator();
    const { config } = loadJobConfig({ file: j.configFile, env: {}, argv: ['--node.id', 'busy'] });
    const mnc = await connectJobNats(config);
    const m = await JobMember.join({
      nc: mnc, jobId: j.jobId, token: 'right-token', nodeId: 'busy', address: '127.0.0.1:1', heartbeatMs: 100, heartbeatWorker: worker,
    });
    try {
      const formed = await m.waitForAssignment(-1);
      busy(3 * 1200); // three heartbeat timeouts
      await new Promise((r) => setTimeout(r, 300)); // let the coordinator's view arrive
      const s = (await j.state())!;
      if (worker) {
        expect(s.generation).toBe(formed.generation);
        expect(s.world.map((p) => p.nodeId)).toEqual(['busy']);
        expect(c.output()).not.toMatch(/member lost/);
      } else {
        await waitUntil('the loss in the coordinator log', () => /member lost: no heartbeat .*node=busy/.test(c.output()), 5000);
        // Alive again, it comes back as a newcomer and gets a new generation.
        const back = await m.waitForAssignment(formed.generation);
        expect(back.generation).toBeGreaterThan(formed.generation);
      }
    } finally {
      m.close();
      await mnc.close();
    }
  });
});

