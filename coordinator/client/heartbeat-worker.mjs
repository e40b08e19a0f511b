// Heartbeats from a worker thread with its own NATS connection, so that a long synchronous step on the main
// thread (a tfjs forward/backward on CPU can take seconds) does not make the trainer look dead. The main thread
// ticks this worker every period; if it stops ticking for `stallMs` (a hung process), the beats stop too and the
// coordinator declares the member lost.
import { parentPort, workerData } from 'node:worker_threads';
import { connectFromWorkerData } from '../../common/nats-worker.mjs';

const { subject, payload, periodMs, stallMs } = workerData;
const nc = await connectFromWorkerData(workerData);
let lastTick = Date.now();
const beat = () => {
  if (Date.now() - lastTick > stallMs) return;
  try {
    nc.publish(subject, payload);
  } catch {
    // closed or reconnecting: the next beat tries again
  }
};
beat();
const timer = setInterval(beat, periodMs);
parentPort.on('message', async (m) => {
  if (m === 'tick') lastTick = Date.now();
  else if (m === 'stop') {
    clearInterval(timer);
    await nc.close().catch(() => {});
    process.exit(0);
  }
});
parentPort.postMessage('ready');
