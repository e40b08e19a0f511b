// Keeps the trainer's shard leases alive from a worker thread with its own NATS connection: a training step keeps
// the main thread busy for seconds, and in-progress signals sent from there would stop for that long, so that the
// queue handed a held shard to another trainer (its samples then trained twice). The main thread registers each
// lease's ack subject (`hold`) until it is acked or handed back (`release`), and ticks; if it stops ticking for
// `stallMs` (a hung process), the signals stop and the leases expire as they should.
// workerData: { servers, user, pass, token, creds, periodMs, stallMs, name }
import { parentPort, workerData } from 'node:worker_threads';
import { connectFromWorkerData } from '../common/nats-worker.mjs';

const { periodMs, stallMs } = workerData;
const nc = await connectFromWorkerData(workerData);
const WPI = new TextEncoder().encode('+WPI');
const held = new Set();
let lastTick = Date.now();
const renew = () => {
  if (Date.now() - lastTick > stallMs) return;
  for (const reply of held) {
    try {
      nc.publish(reply, WPI);
    } catch {
      // closed or reconnecting: the next round tries again
    }
  }
};
const timer = setInterval(renew, periodMs);
parentPort.on('message', async (m) => {
  if (m.type === 'tick') lastTick = Date.now();
  else if (m.type === 'hold') {
    held.add(m.reply);
    lastTick = Date.now();
  } else if (m.type === 'release') held.delete(m.reply);
  else if (m.type === 'stop') {
    clearInterval(timer);
    await nc.close().catch(() => {});
    process.exit(0);
  }
});
parentPort.postMessage('ready');
