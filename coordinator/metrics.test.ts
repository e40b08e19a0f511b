// The coordinator's Prometheus metrics: names, counters advanced by differences, served on /metrics.
import { expect, test } from 'vitest';
import { createRegistry, serveMetrics } from '../common';
import { CoordinatorMetrics } from './metrics';

test('coordinator metrics: names, ledger counters advanced by differences, served on /metrics', async () => {
  const registry = createRegistry({ labels: { job_id: 'j', node: 'coordinator' }, defaultMetrics: false });
  const m = new CoordinatorMetrics(registry);
  m.worldSize.set(3);
  m.generation.set(7);
  m.syncLedger(2, 5); // first sight after a (re)start: the counters start at the ledger's totals
  m.syncLedger(4, 9);
  m.syncLedger(4, 9);
  const server = await serveMetrics(registry, { port: 0 });
  try {
    const text = await fetch(`http://${server.address}/metrics`).then((r) => r.text());
    expect(text).toContain('blip2_coordinator_world_size{job_id="j",node="coordinator"} 3');
    expect(text).toContain('blip2_coordinator_generation{job_id="j",node="coordinator"} 7');
    expect(text).toContain('blip2_coordinator_commits_total{job_id="j",node="coordinator"} 4');
    expect(text).toContain('blip2_coordinator_shards_acked_total{job_id="j",node="coordinator"} 9');
    for (const name of ['members', 'epoch', 'committed_step', 'shards_uncommitted', 'samples_committed', 'job_finished',
      'generation_changes_total', 'auth_refused_total']) {
      expect(text).toMatch(new RegExp(`^# TYPE blip2_coordinator_${name} `, 'm'));
    }
    expect((await fetch(`http://${server.address}/healthz`)).status).toBe(200);
    expect((await fetch(`http://${server.address}/nope`)).status).toBe(404);
  } finally {
    await server.close();
  }
});

test('the job\'s plan, world bounds and checkpoint age: absent before the first commit, then counted from it', async () => {
  let now = 5_000_000;
  const registry = createRegistry({ defaultMetrics: false });
  const m = new CoordinatorMetrics(registry, () => now);
  m.setPlan({ epochs: 3, samplesPerEpoch: 86, batchSizePerTrainer: 4, maxSteps: 0, worldMin: 1, worldMax: 4, expectedWorld: 2 });
  let text = await registry.metrics();
  expect(text).toMatch(/^blip2_coordinator_epochs_planned 3$/m);
  expect(text).toMatch(/^blip2_coordinator_epoch_samples 86$/m);
  expect(text).toMatch(/^blip2_coordinator_samples_planned 258$/m);
  expect(text).toMatch(/^blip2_coordinator_steps_planned 33$/m); // 3 x ceil(86 / (4 x 2))
  expect(text).toMatch(/^blip2_coordinator_world_min 1$/m);
  expect(text).toMatch(/^blip2_coordinator_world_max 4$/m);
  expect(text).not.toMatch(/^blip2_coordinator_(checkpoint_age|last_commit_timestamp)_seconds /m);
  m.updateWorld(3);
  m.updateWorld(0); // the world dissolved (job over): the estimate stays
  m.setLastCommit(now - 1500);
  now += 10_000;
  text = await registry.metrics();
  expect(text).toMatch(/^blip2_coordinator_steps_planned 24$/m); // 3 x ceil(86 / 12)
  expect(text).toMatch(/^blip2_coordinator_checkpoint_age_seconds 11\.5$/m);
  expect(text).toMatch(/^blip2_coordinator_last_commit_timestamp_seconds 4998\.5$/m);
  m.setPlan({ epochs: 3, samplesPerEpoch: 86, batchSizePerTrainer: 4, maxSteps: 10, worldMin: 1, worldMax: 4, expectedWorld: 2 });
  expect(await registry.metrics()).toMatch(/^blip2_coordinator_steps_planned 10$/m);
});
