/**
 * Bad input to the real trainer process is refused with a clear error: a bad config value, and a wrong job token.
 * (A truncated checkpoint: test/job-resume.test.ts.)
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, expect, inject, test } from 'vitest';
import { createJob, type TestJob } from './helpers/job';
import { exitWithin, waitUntil } from './helpers/procs';

let nc: NatsConnection;
let current: TestJob | undefined;
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});
afterEach(() => {
  for (const p of current?.procs ?? []) p.kill('SIGKILL');
});

const job = async (name: string) =>
  (current = await createJob({
    nc, natsUrl: inject('natsUrl'), name,
    config: { model: { preset: 'tiny' }, world: { min: 1, max: 2 }, membership: { heartbeatMs: 200, timeoutMs: 2500 } },
    data: { samples: 8, shardSize: 8 },
  }));

test('a trainer with a bad config value stops before doing anything, naming the key, the value and the rule', async () => {
  const j = await job('bad-config');
  const t = j.trainer('t', ['--train.batchSizePerTrainer', '-4', '--optim.beta2', '1.5']);
  expect((await exitWithin(t, 60_000, 'trainer')).code).toBe(2);
  expect(t.output()).toMatch(/train\.batchSizePerTrainer: must be an integer >= 1: value was -4/);
  expect(t.output()).toMatch(/optim\.beta2: must be a number in \[0, 1\): value was 1\.5/);
});

test('a trainer with a wrong job token is refused by the coordinator with a clear error', async () => {
  const j = await job('bad-token');
  const c = j.coordinator();
  const t = j.trainer('intruder', ['--job.token', 'not-the-token']);
  expect((await exitWithin(t, 60_000, 'trainer')).code).toBe(2);
  expect(t.output()).toMatch(new RegExp(`job ${j.jobId} refused join from node "intruder": the job token does not match`));
  expect(t.output()).not.toContain('job-token'); // the right token is never echoed
  await waitUntil('the refusal in the coordinator log', () => /request refused: wrong job token .*node=intruder/.test(c.output()), 5000);
  expect((await j.state())!.members).toEqual([]);
});
