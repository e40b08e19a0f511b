// /healthz and /readyz: a main loop that beats stays healthy, work without a beat past the limit is a stall, a wait
// on others is healthy however long; readiness as the process sets it; both served with 200 / 503.
import { expect, test } from 'vitest';
import { ProcessHealth } from './health';
import { createRegistry, serveMetrics } from './metrics';

test('healthy while the loop beats or waits on others; a stall past the limit is unhealthy; readiness as set', async () => {
  let now = 1_000_000;
  const h = new ProcessHealth({ stallMs: 60_000, now: () => now });
  const server = await serveMetrics(createRegistry({ defaultMetrics: false }), { port: 0, health: h.health, ready: h.ready });
  const get = async (path: string) => {
    const r = await fetch(`http://${server.address}${path}`);
    return `${r.status} ${(await r.text()).trim()}`;
  };
  try {
    expect(await get('/readyz')).toBe('503 not ok: starting');
    h.beat('step 1');
    now += 59_000;
    expect(await get('/healthz')).toBe('200 ok: last step 1 59.0 s ago');
    now += 2_000;
    expect(await get('/healthz')).toBe('503 not ok: main loop stalled: last step 1 61.0 s ago (limit 60 s)');
    h.waiting('a generation (rendezvous)');
    now += 3_600_000;
    expect(await get('/healthz')).toBe('200 ok: waiting for a generation (rendezvous) since 3600.0 s ago');
    h.beat('step 2');
    h.setReady(true, 'generation 3, rank 0 of 2');
    expect(await get('/healthz')).toBe('200 ok: last step 2 0.0 s ago');
    expect(await get('/readyz')).toBe('200 ok: generation 3, rank 0 of 2');
    h.setReady(false, 'stopping (SIGTERM)');
    expect(await get('/readyz')).toBe('503 not ok: stopping (SIGTERM)');
  } finally {
    await server.close();
  }
});

test('Node default metrics under their usual names, without the gauges promtool refuses', async () => {
  const text = await createRegistry().metrics();
  for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_seconds']) {
    expect(text).toMatch(new RegExp(`^# TYPE ${name} `, 'm'));
  }
  expect(text).not.toMatch(/blip2_process_|blip2_nodejs_|nodejs_active_handles_total/);
});
