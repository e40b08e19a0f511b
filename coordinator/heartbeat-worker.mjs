// Heartbeats from a worker thread with its own NATS connection, so that a long synchronous step on the main
// thread (a tfjs forward/backward on CPU can take seconds) does not make the trainer look dead. The main thread
// ticks this worker every period; if it stops ticking for `stallMs` (a hung process), the beats stop too and the
// coordinator declares the member lost.
import { parentPort, workerData } from 'node:worker_threads';
import { connect, credsAuthenticator, tokenAuthenticator, usernamePasswordAuthenticator } from '@nats-io/transport-node';

const { servers, user, pass, token, creds, subject, payload, periodMs, stallMs, name } = workerData;
const authenticator = [];
if (creds) authenticator.push(credsAuthenticator(new Uint8Array(creds)));
if (user) authenticator.push(usernamePasswordAuthenticator(user, pass));
if (token) authenticator.push(tokenAuthenticator(token));
const nc = await connect({
  servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 250,
  ...(authenticator.length ? { authenticator: authenticator.length === 1 ? authenticator[0] : authenticator } : {}),
});
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
