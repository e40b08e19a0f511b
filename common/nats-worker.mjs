// A NATS connection opened inside a worker thread from the connection settings the main thread passed in
// `workerData` (servers, user/pass, token, creds bytes, name). Used by the workers that keep a process visibly alive
// while its main thread is busy with a long step: the coordinator's heartbeats and the trainer's lease renewals.
import { connect, credsAuthenticator, tokenAuthenticator, usernamePasswordAuthenticator } from '@nats-io/transport-node';

export function connectFromWorkerData({ servers, user, pass, token, creds, name }) {
  const authenticator = [];
  if (creds) authenticator.push(credsAuthenticator(new Uint8Array(creds)));
  if (user) authenticator.push(usernamePasswordAuthenticator(user, pass));
  if (token) authenticator.push(tokenAuthenticator(token));
  return connect({
    // The main thread is connected already: a first connect that meets an outage waits for the server to return.
    servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, waitOnFirstConnect: true,
    ...(authenticator.length ? { authenticator: authenticator.length === 1 ? authenticator[0] : authenticator } : {}),
  });
}
