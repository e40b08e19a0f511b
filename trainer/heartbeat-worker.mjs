// The trainer's heartbeat, from a worker thread with its own NATS connection: a training step computes
// synchronously for seconds at a time, and heartbeats sent from the main thread would stop for that long and make
// the coordinator declare a busy trainer lost. The worker dies with its process, so a killed trainer still goes
// silent at once; a main thread that hangs is caught by its peers' collective timeouts instead.
// workerData: { servers: string[], name, auth: { token?, user?, password?, credsFile? }, subject, payload, periodMs }
import { readFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { connect, credsAuthenticator, tokenAuthenticator, usernamePasswordAuthenticator } from '@nats-io/transport-node';

const { servers, name, auth, subject, payload, periodMs } = workerData;
const authenticator = [];
if (auth.credsFile) authenticator.push(credsAuthenticator(readFileSync(auth.credsFile)));
if (auth.user) authenticator.push(usernamePasswordAuthenticator(auth.user, auth.password));
if (auth.token) authenticator.push(tokenAuthenticator(auth.token));
const nc = await connect({
  servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 250,
  ...(authenticator.length ? { authenticator: authenticator.length === 1 ? authenticator[0] : authenticator } : {}),
});
const beat = () => {
  try {
    nc.publish(subject, payload);
  } catch {
    // reconnecting: the next beat goes out when the connection is back
  }
};
beat();
const timer = setInterval(beat, periodMs);
parentPort.on('message', async (m) => {
  if (m === 'stop') {
    clearInterval(timer);
    await nc.drain().catch(() => undefined);
    process.exit(0);
  }
});
parentPort.postMessage('started');
