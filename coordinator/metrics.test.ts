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
