/**
 * The coordinator process: `tsx coordinator/main.ts [--config job.yaml] [--key value ...]`.
 * Runs the job's coordinator until the job finishes (exit 0); SIGTERM/SIGINT stop it at once (exit 143), leaving the
 * job's state in NATS KV for the next coordinator to continue from.
 */
import {
  connectJobNats, createLogger, createRegistry, EXIT_SIGNALLED, loadProcessConfig, ProcessHealth, runProcess, serveMetrics, UsageError,
} from '../common';
import { Coordinator } from './coordinator';
import { DataEpochPublisher, loadJobIndex } from './epochs';
import { CoordinatorMetrics } from './metrics';

runProcess('coordinator', async () => {
  const { config } = loadProcessConfig(process.argv.slice(2));
  const log = createLogger('coordinator', { job: config.job.id });
  if (!config.job.token) throw new UsageError('job.token is empty: set it in the config or BLIP2_JOB_TOKEN (`blip2 launch` generates one)');
  loadJobIndex(config); // fail now, not at the first epoch, when the data is missing
  const nc = await connectJobNats(config, { name: `blip2-coordinator-${config.job.id}` });
  const registry = createRegistry({ labels: { job_id: config.job.id, node: 'coordinator' } });
  const metrics = new CoordinatorMetrics(registry);
  // Healthy while the liveness tick (every 250 ms at most) runs; ready once the job state is loaded and served.
  const health = new ProcessHealth({ stallMs: 60_000 });
  const server = config.metrics.enabled
    ? await serveMetrics(registry, { host: config.metrics.host, port: config.metrics.port, health: health.health, ready: health.ready })
    : undefined;
  if (server) log.info('metrics at http://' + server.address + '/metrics');
  const publisher = new DataEpochPublisher({ nc, config, registry, log });
  metrics.setPlan({
    epochs: config.train.epochs, samplesPerEpoch: publisher.plan(0).reduce((n, d) => n + (d.end - d.start), 0),
    batchSizePerTrainer: config.train.batchSizePerTrainer, maxSteps: config.train.maxSteps, worldMin: config.world.min, worldMax: config.world.max,
    expectedWorld: Math.min(config.world.max, Math.max(config.world.min, config.world.trainers)),
  });
  const coordinator = new Coordinator({
    nc, jobId: config.job.id, token: config.job.token, publisher, metrics, health, log,
    heartbeatTimeoutMs: config.membership.timeoutMs,
    protocol: {
      minWorld: config.world.min, maxWorld: config.world.max, settleMs: config.world.rendezvousSettleMs,
      epochs: config.train.epochs, maxSteps: config.train.maxSteps,
    },
  });
  let stopping = false;
  const stop = async (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info('stopping', { why });
    clearInterval(progress);
    await coordinator.stop();
    await server?.close();
    await nc.drain().catch(() => undefined);
  };
  await coordinator.start();
  const progress = setInterval(() => void publisher.refreshProgress().catch(() => undefined), 2000);
  const signalled = new Promise<number>((resolve) => {
    // 128 + 15: stopped before the job ended, so a supervisor (a Kubernetes Job) starts another coordinator.
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void stop(sig).then(() => resolve(EXIT_SIGNALLED)));
  });
  const code = await Promise.race([
    // After the end, answer stragglers' requests for a moment before going.
    coordinator.finished.then(() => new Promise<number>((r) => setTimeout(() => r(0), 2 * config.membership.heartbeatMs))),
    signalled,
  ]);
  await stop('job finished');
  return code;
});
