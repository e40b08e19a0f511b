/**
 * A NATS outage in the middle of a job: the job's own nats-server (JetStream store kept on disk) is stopped for
 * twice `membership.timeoutMs` and started again on the same port and store. The coordinator and the trainer
 * stand-ins run with `--unhandled-rejections=strict` (an unhandled promise rejection ends the process); they must
 * reconnect and resume, the coordinator must not declare members lost while it is the one cut off, and the job
 * must finish with every sample once per epoch.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, describe, expect, test } from 'vitest';
import { JobStore, type JobState } from '../coordinator/client';
import { loadIndex, planEpoch, sampleId, SampleLedger } from '../dataloader';
import { startNatsServer, type NatsServerHandle } from './setup/nats';
import { exitWithin, makeJobDir, runTs, waitUntil, type Proc } from './helpers/procs';

const procs: Proc[] = [];
let server: NatsServerHandle | undefined;
let nc: NatsConnection | undefined;

afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail') {
    for (const p of procs) process.stderr.write(`--- ${p.label}\n${p.output().slice(-4000)}\n`);
  }
  for (const p of procs.splice(0)) p.kill('SIGKILL');
  await nc?.close().catch(() => undefined);
  await server?.stop();
});

describe('NATS outage mid-job', () => {
  test('nats-server stopped for 2x membership.timeoutMs and restarted: every process reconnects, no member is lost, the job finishes exactly once', async () => {
    const storeDir = mkdtempSync(join(tmpdir(), 'blip2-outage-nats-'));
    server = await startNatsServer({ storeDir });
    const port = server.port;
    const timeoutMs = 1500;
    const jobId = `outage-${process.pid}`;
    const j = await makeJobDir(
      {
        job: { id: jobId, token: 'outage-token' },
        nats: { url: server.url },
        train: { epochs: 2, batchSizePerTrainer: 4 },
        data: { samplesPerShard: 8, ackWaitMs: 5000 },
        world: { min: 1, max: 4, rendezvousSettleMs: 400 },
        membership: { heartbeatMs: 100, timeoutMs },
        metrics: { enabled: false },
        log: { level: 'info' },
      },
      { samples: 40, shardSize: 12 },
    );
    const strict = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --unhandled-rejections=strict`.trim() };
    const c = runTs('coordinator/main.ts', ['--config', j.configFile], { BLIP2_NODE_ID: 'coordinator', ...strict });
    const trainers = ['a', 'b'].map((id) => runTs('test/fixtures/standin-trainer.ts', ['--config', j.configFile], { BLIP2_NODE_ID: id, STANDIN_STEP_MS: '150', ...strict }));
    procs.push(c, ...trainers);
    nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    let store: JobStore | undefined;
    const state = async (): Promise<JobState | null> => {
      try {
        store ??= await JobStore.open(nc!, jobId);
        return (await store.read())?.state ?? null;
      } catch {
        store = undefined;
        return null;
      }
    };
    const before = await waitUntil('a world of 2 and a commit', async () => {
      const s = await state();
      return s && s.world.length === 2 && (s.committed?.step ?? 0) >= 2 ? s : null;
    }, 60_000);
    expect(before.status).toBe('running');

    await server.stop();
    await new Promise((r) => setTimeout(r, 2 * timeoutMs));
    server = await startNatsServer({ storeDir, port });

    for (const [name, p] of [['a', trainers[0]!], ['b', trainers[1]!], ['coordinator', c]] as const) {
      expect((await exitWithin(p, 120_000, name)).code, `${name}:\n${p.output().slice(-4000)}`).toBe(0);
    }
    const log = c.output();
    expect(log).toMatch(/NATS connection lost: liveness checks paused/);
    expect(log).toMatch(/NATS connection back/);
    expect(log.slice(log.indexOf('NATS connection lost'))).not.toMatch(/member lost/);
    const s = (await waitUntil('the final state', () => state(), 10_000))!;
    expect(s.status).toBe('finished');
    expect(s.generation).toBe(before.generation); // nobody was declared lost
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
