/** Starts and stops the heartbeat worker (see heartbeat-worker.mjs for why heartbeats leave the main thread). */
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { JobConfig } from '../common';
import { jobSubjects } from '../coordinator';

const ENTRY = fileURLToPath(new URL('./heartbeat-worker.mjs', import.meta.url));

export interface HeartbeatHandle {
  stop(): Promise<void>;
}

/** Publishes this trainer's heartbeat every `membership.heartbeatMs` from a worker thread until `stop()`. */
export async function startHeartbeat(config: JobConfig, address: string): Promise<HeartbeatHandle> {
  const worker = new Worker(ENTRY, {
    workerData: {
      servers: config.nats.url.split(',').map((s) => s.trim()),
      name: `blip2-${config.node.id}-heartbeat`,
      auth: { token: config.nats.token, user: config.nats.user, password: config.nats.password, credsFile: config.nats.credsFile },
      subject: jobSubjects(config.job.id).heartbeat,
      payload: JSON.stringify({ token: config.job.token, nodeId: config.node.id, address }),
      periodMs: config.membership.heartbeatMs,
    },
  });
  worker.unref();
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`heartbeat worker exited with code ${code} before starting`)));
  });
  return {
    async stop() {
      const exited = new Promise<void>((r) => worker.once('exit', () => r()));
      worker.postMessage('stop');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
      await worker.terminate();
    },
  };
}
