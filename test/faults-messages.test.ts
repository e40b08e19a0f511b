/**
 * Bad messages on every subject of a running job (real nats-server, the real coordinator process, trainer
 * stand-ins): null, garbage, wrong types and missing fields on control, heartbeat and progress, and malformed
 * descriptors in the shard stream. Each is answered or dropped and counted; the job still finishes with every
 * sample once per epoch. Also: the trainer's JetStream epoch source removes a malformed descriptor, so the epoch
 * drains.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, inject, test } from 'vitest';
import { jobSubjects } from '../common';
import { JobStore, type JobState } from '../coordinator/client';
import { CaptionTokenizer, loadIndex, planEpoch, sampleId, SampleLedger, ShardPublisher } from '../dataloader';
import { JetStreamEpochData } from '../trainer/epoch-data';
import { freePort } from './setup/nats';
import { exitWithin, makeJobDir, runTs, waitUntil, type Proc } from './helpers/procs';

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

const TOKEN = 'right-token';
const enc = (v: unknown) => new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v));

const metrics = async (port: number): Promise<string> => fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text(), () => '');
/** Sum of the rejection counter's series that carry every label given (`reason="schema"`, `subject="control"`). */
const counter = (text: string, ...labels: string[]): number =>
  text.split('\n').filter((l) => l.startsWith('blip2_coordinator_messages_rejected_total{') && labels.every((x) => l.includes(x)))
    .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);

describe('bad messages on a running job', () => {
  test('null, garbage and missing fields on control, heartbeat, progress and the shard stream: answered or dropped, counted; the job finishes exactly once', async () => {
    const jobId = `faults-msg-${process.pid}-${jobNo++}`;
    const metricsPort = await freePort();
    const j = await makeJobDir(
      {
        job: { id: jobId, token: TOKEN },
        nats: { url: inject('natsUrl') },
        train: { epochs: 2, batchSizePerTrainer: 4 },
        data: { samplesPerShard: 8, ackWaitMs: 1500 },
        world: { min: 1, max: 4, rendezvousSettleMs: 400 },
        membership: { heartbeatMs: 100, timeoutMs: 1200 },
        metrics: { enabled: false },
        log: { level: 'info' },
      },
      { samples: 40, shardSize: 12 },
    );
    const c = runTs('coordinator/main.ts', ['--config', j.configFile, '--metrics.enabled', 'true', '--metrics.port', String(metricsPort)]);
    procs.push(c);
    const trainers = ['a', 'b'].map((id) => runTs('test/fixtures/standin-trainer.ts', ['--config', j.configFile], { BLIP2_NODE_ID: id, STANDIN_STEP_MS: '60' }));
    procs.push(...trainers);
    let store: JobStore | undefined;
    const state = async (): Promise<JobState | null> => {
      try {
        store ??= await JobStore.open(nc, jobId);
        return (await store.read())?.state ?? null;
      } catch {
        store = undefined;
        return null;
      }
    };
    // A world of 2 whose shard queue has been rebuilt: the descriptors published below come after that rebuild's
    // purge (published before it, they were purged unread and no trainer rejected them).
    const running = await waitUntil('a world of 2 with its queue rebuilt', async () => {
      const s = await state();
      return s?.world.length === 2 && s.queueGeneration === s.generation ? s : null;
    }, 30_000);
    const subjects = jobSubjects(jobId);

    // Control (request/reply): each bad request gets a bad-request answer naming what is wrong.
    const bad: [unknown, RegExp][] = [
      ['null', /must be a JSON object/],
      ['{"type": "join", tok', /not JSON/],
      [[1, 2], /must be a JSON object/],
      [{ type: 'join', token: TOKEN }, /nodeId: must be a string, got missing/],
      [{ type: 'join', token: TOKEN, nodeId: 'ghost', address: 7, incarnation: 'x' }, /address: must be a string, got 7/],
      [{ type: 'commit', token: TOKEN, nodeId: 'a', generation: running.generation, commit: null }, /commit: must be a JSON object, got null/],
      [{ type: 'commit', token: TOKEN, nodeId: 'a', generation: running.generation, commit: { step: 99, epoch: 0, checkpointDir: '/tmp/x', cursors: { s: -1 }, ackedShards: [] } }, /commit\.cursors\["s"\]: must be an integer >= 0, got -1/],
      [{ type: 'failure', token: TOKEN, nodeId: 'a', generation: 'one', message: 'x' }, /generation: must be an integer >= 0, got "one"/],
      [{ type: 'epochDone', token: TOKEN, nodeId: 'a', generation: running.generation }, /epoch: must be an integer >= 0, got missing/],
      [{ type: 'explode', token: TOKEN, nodeId: 'a' }, /type: must be one of join, leave, failure, commit, epochDone, stop, got "explode"/],
    ];
    for (const [payload, why] of bad) {
      const reply = (await nc.request(subjects.control, enc(payload), { timeout: 5000 })).json<{ ok: boolean; code: string; message: string }>();
      expect(reply, JSON.stringify(payload)).toMatchObject({ ok: false, code: 'bad-request' });
      expect(reply.message, JSON.stringify(payload)).toMatch(why);
    }
    // A wrong token is refused before the schema is looked at.
    const refused = (await nc.request(subjects.control, enc({ type: 'commit', token: 'nope', nodeId: 'a' }), { timeout: 5000 })).json<{ code: string }>();
    expect(refused.code).toBe('auth');
    // The same without a reply subject, and on the heartbeat and progress subjects (publish only: dropped).
    for (const subject of [subjects.control, subjects.heartbeat, subjects.progress]) {
      for (const payload of ['null', 'garbage', '{}', '[]', '"text"', { token: TOKEN }, { token: TOKEN, nodeId: 'a' }, { nodeId: 'a', step: 'x' }]) {
        nc.publish(subject, enc(payload));
      }
    }
    nc.publish(subjects.heartbeat, enc({ token: 'wrong', nodeId: 'a', address: 'x:1', incarnation: 'i' }));
    // Malformed descriptors in the job's shard stream, for the current epoch.
    const js = jetstream(nc);
    await js.publish(`${subjects.shardSubject}`, enc('not a descriptor'));
    await js.publish(`${subjects.shardSubject}`, enc({ v: 1, id: 'e0/train/x#0-4', epoch: 0, seed: 42, dataset: 'train', format: 'webdataset', shard: '../../etc/passwd', start: 0, end: 4, order: 0 }));
    await nc.flush();

    const text = await waitUntil('the rejections counted', async () => {
      const t = await metrics(metricsPort);
      return counter(t, 'reason="schema"', 'subject="heartbeat"') >= 4 ? t : null;
    }, 10_000);
    expect(counter(text, 'reason="schema"', 'subject="control"')).toBeGreaterThanOrEqual(10);
    expect(counter(text, 'reason="not-json"', 'subject="control"')).toBeGreaterThanOrEqual(2);
    expect(counter(text, 'reason="not-json"', 'subject="heartbeat"')).toBeGreaterThanOrEqual(1);
    expect(counter(text, 'reason="auth"', 'subject="control"')).toBe(3); // the wrong token, and two messages with none
    expect(counter(text, 'reason="auth"', 'subject="heartbeat"')).toBe(1);
    expect(counter(text, 'reason="handler-error"')).toBe(0);

    for (const [name, p] of [['a', trainers[0]!], ['b', trainers[1]!], ['coordinator', c]] as const) {
      expect((await exitWithin(p, 90_000, name)).code, p.output().slice(-3000)).toBe(0);
    }
    expect(c.output()).toMatch(/message rejected/);
    expect(trainers.map((t) => t.output()).join('\n')).toMatch(/descriptor rejected \(terminated and removed\)/);
    const s = (await state())!;
    expect(s.status).toBe('finished');
    // No member was lost to the noise: the world formed once.
    expect(s.generation).toBe(running.generation);
    const ledger = JSON.parse(readFileSync(join(s.committed!.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
    const index = loadIndex(join(j.dataRoot, 'index.json'));
    const l = new SampleLedger();
    for (let e = 0; e < 2; e++) {
      const expected = planEpoch({ index, datasets: ['train'], epoch: e, seed: 42, shardSizeSamples: 8 })
        .flatMap((d) => Array.from({ length: d.end - d.start }, (_, k) => sampleId(d, String(d.start + k))));
      l.record(e, ledger[e] ?? []);
      expect(l.check(e, expected), `epoch ${e}`).toEqual({ ok: true, missing: [], duplicates: [], unexpected: [] });
    }
  });
});

describe('malformed descriptors in the trainer epoch source', () => {
  test('a descriptor that does not parse is terminated, removed from the work queue and counted; the epoch drains', async () => {
    const j = await makeJobDir({}, { samples: 20, shardSize: 10 });
    const stream = `FAULTS_DESC_${process.pid}_${jobNo++}`;
    const subject = `faults.desc.${process.pid}.${jobNo}`;
    const pub = new ShardPublisher({ nc, stream, subject, ackWaitMs: 1000 });
    await pub.ensureStream();
    const js = jetstream(nc);
    await js.publish(subject, enc('{"v":1,"epoch":'));
    const plan = planEpoch({ index: loadIndex(join(j.dataRoot, 'index.json')), datasets: ['train'], epoch: 0, seed: 1, shardSizeSamples: 8 });
    await pub.publishEpoch(plan);
    await js.publish(subject, enc({ ...plan[0]!, id: 'forged' }));
    const registry = new Registry();
    const data = new JetStreamEpochData({
      nc, stream, ackWaitMs: 1000, dataRoot: j.dataRoot, tokenizer: CaptionTokenizer.fromFile(join(j.dataRoot, 'tokenizer.json')),
      batchSize: 4, workers: 0, registry, transform: { mode: 'eval', imageSize: 16 },
    });
    const src = data.open(0, { cursorFor: () => undefined, skip: () => false });
    let samples = 0;
    for (;;) {
      const r = await src.next();
      if (r.done || !r.value) break;
      const b = r.value;
      samples += b.sampleIds.length;
      for (const lease of b.completed) await lease.ack();
    }
    await src.close();
    data.close();
    expect(samples).toBe(plan.reduce((n, d) => n + d.end - d.start, 0));
    // Nothing left behind: a terminated message kept in the work queue would stay pending for ever.
    await waitUntil('the queue empty', async () => {
      const p = await pub.progress();
      return p.pending === 0 && p.inFlight === 0 && p.remaining === 0;
    }, 10_000);
    const text = await registry.metrics();
    expect(text).toMatch(/blip2_trainer_data_descriptors_rejected_total\{reason="not-json"\} 1/);
    expect(text).toMatch(/blip2_trainer_data_descriptors_rejected_total\{reason="schema"\} 1/);
    await pub.deleteStream();
  });
});
