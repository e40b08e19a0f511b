// What every process of a job needs to talk to NATS: the connection, opened with the credentials the job config
// names (and remembered, so a worker thread can open its own), and the job's subject and bucket names.
import { readFileSync } from 'node:fs';
import {
  connect, credsAuthenticator, tokenAuthenticator, usernamePasswordAuthenticator,
  type Authenticator, type NatsConnection,
} from '@nats-io/transport-node';
import type { JobConfig } from './config';
import { UsageError } from './errors';

export interface ConnectJobNatsOptions {
  /** Connection name shown by the server (monitoring). Default: blip2-<node.id>. */
  name?: string;
  /** Overrides config.nats.url (the launcher's own server). */
  url?: string;
  /** How long the first connection may take before it fails, in ms (default: the client's, 20 s). */
  timeoutMs?: number;
}

/** No NATS server answered at the configured address (down, wrong address, unreachable): not a fault of the input. */
export class NatsUnreachableError extends UsageError {}

/** How a connection made by connectJobNats was opened (plain data: a worker thread can open its own). */
export interface NatsConnectData {
  servers: string[];
  user?: string;
  pass?: string;
  token?: string;
  creds?: Uint8Array;
}
const connectData = new WeakMap<NatsConnection, NatsConnectData>();

/** The options a connection from connectJobNats was opened with, for a second connection (heartbeat worker). */
export function natsConnectDataOf(nc: NatsConnection): NatsConnectData | undefined {
  return connectData.get(nc);
}

export async function connectJobNats(config: JobConfig, o: ConnectJobNatsOptions = {}): Promise<NatsConnection> {
  const url = o.url ?? config.nats.url;
  if (!url) throw new UsageError('nats.url is empty: set it (or BLIP2_NATS_URL), or start the job with `blip2 launch`, which starts a nats-server');
  const authenticator: Authenticator[] = [];
  const servers = url.split(',').map((s) => s.trim());
  const data: NatsConnectData = { servers };
  if (config.nats.credsFile) {
    let creds: Uint8Array;
    try {
      creds = readFileSync(config.nats.credsFile);
    } catch (e) {
      throw new UsageError(`nats.credsFile ${config.nats.credsFile}: ${(e as Error).message}`);
    }
    authenticator.push(credsAuthenticator(creds));
    data.creds = creds;
  }
  if (config.nats.user) {
    authenticator.push(usernamePasswordAuthenticator(config.nats.user, config.nats.password));
    Object.assign(data, { user: config.nats.user, pass: config.nats.password });
  }
  if (config.nats.token) {
    authenticator.push(tokenAuthenticator(config.nats.token));
    data.token = config.nats.token;
  }
  try {
    const nc = await connect({
      servers,
      name: o.name ?? `blip2-${config.node.id}`,
      ...(authenticator.length ? { authenticator: authenticator.length === 1 ? authenticator[0] : authenticator } : {}),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      ...(o.timeoutMs !== undefined ? { timeout: o.timeoutMs } : {}),
    });
    connectData.set(nc, data);
    return nc;
  } catch (e) {
    const message = `could not connect to NATS at ${url}: ${(e as Error).message}`;
    // A refused login is a configuration fault (credentials); anything else means no server answered.
    if (/authori[sz]ation|authentication|permission/i.test((e as Error).message ?? '')) throw new UsageError(message);
    throw new NatsUnreachableError(message);
  }
}

/** Subjects and names of one job on NATS. */
export function jobSubjects(jobId: string) {
  return {
    /** Request/reply: join, failure, commit, epochDone, leave. */
    control: `blip2.${jobId}.control`,
    /** Publish: heartbeats of members. */
    heartbeat: `blip2.${jobId}.heartbeat`,
    /** Publish: rank 0's progress (step, losses, samples/s). */
    progress: `blip2.${jobId}.progress`,
    /** KV bucket holding the job state. */
    bucket: `blip2-job-${jobId}`,
    /** KV key of the state. */
    stateKey: 'state',
    /** JetStream stream of the job's shard descriptors. */
    shardStream: `BLIP2_SHARDS_${jobId.replace(/-/g, '_')}`,
    /** Subject prefix of the shard descriptors (`<prefix>.<epoch>`). */
    shardSubject: `blip2.${jobId}.shards`,
  };
}
