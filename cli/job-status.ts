// `blip2 status`: a job's state read from NATS KV (the bucket the coordinator writes), as a report and as text:
// status, generation, world (ranks and node ids), epoch and last committed step, the last commit with its age.
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectJobNats, jobSubjects, NatsUnreachableError, UsageError, type JobConfig } from '../common';
import { JobStore, type JobState } from '../coordinator/client';
import { CommandFailedError } from './errors';

export interface JobStatusReport {
  jobId: string;
  status: JobState['status'];
  generation: number;
  /** Why the generation last changed. */
  reason: string;
  world: { rank: number; nodeId: string; address: string }[];
  /** Members registered beyond the world (spares, or waiting to be taken in). */
  members: string[];
  /** Epoch being trained, 1-based (as `launch` shows it), and the planned epochs. */
  epoch: number;
  epochs: number;
  /** Last committed step (0: none yet). */
  step: number;
  committed: { step: number; epoch: number; checkpointDir: string; createdAt: string | null; ageSeconds: number | null } | null;
  samplesCommitted: number;
  commits: number;
}

export interface ReadJobStatusOptions {
  /** Job id; default config.job.id. */
  jobId?: string;
  /** How long NATS may take to answer, in ms (connection and each read). */
  timeoutMs?: number;
  /** Clock for the commit's age (tests). */
  now?: number;
}

/** Resolves with `p`, or rejects with `onTimeout()` after `ms`. */
function within<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(onTimeout()), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * When the commit's checkpoint was written: its checkpoint.json's `createdAt` (trainer/checkpoint.ts), else the
 * folder's modification time; null where the folder cannot be read from here (another machine's volume).
 */
function checkpointCreatedAt(dir: string): string | null {
  try {
    const meta = JSON.parse(readFileSync(join(dir, 'checkpoint.json'), 'utf8')) as { createdAt?: unknown };
    if (typeof meta.createdAt === 'string' && !Number.isNaN(Date.parse(meta.createdAt))) return meta.createdAt;
  } catch { /* fall back to the folder */ }
  try {
    return statSync(dir).mtime.toISOString();
  } catch {
    return null;
  }
}

/** The report of a state (pure but for reading the checkpoint's time). */
export function statusReport(state: JobState, epochs: number, now = Date.now()): JobStatusReport {
  const worldIds = new Set(state.world.map((p) => p.nodeId));
  const c = state.committed;
  const createdAt = c ? checkpointCreatedAt(c.checkpointDir) : null;
  return {
    jobId: state.jobId,
    status: state.status,
    generation: state.generation,
    reason: state.reason,
    world: state.world.map((p) => ({ rank: p.rank, nodeId: p.nodeId, address: p.address })),
    members: state.members.map((m) => m.nodeId).filter((id) => !worldIds.has(id)),
    epoch: state.status === 'finished' ? epochs : Math.min(state.epoch + 1, epochs),
    epochs,
    step: c?.step ?? 0,
    committed: c
      ? {
          step: c.step, epoch: c.epoch + 1, checkpointDir: c.checkpointDir, createdAt,
          ageSeconds: createdAt === null ? null : Math.max(0, Math.round((now - Date.parse(createdAt)) / 1000)),
        }
      : null,
    samplesCommitted: state.ledger.samplesCommitted,
    commits: state.ledger.commits,
  };
}

/**
 * Reads the job's state from NATS KV. A job with no state is a UsageError (exit 2); a NATS server that does not
 * answer within the timeout is a CommandFailedError (exit 1).
 */
export async function readJobStatus(config: JobConfig, o: ReadJobStatusOptions = {}): Promise<JobStatusReport> {
  const jobId = o.jobId ?? config.job.id;
  const timeoutMs = o.timeoutMs ?? 5000;
  const url = config.nats.url;
  let nc: NatsConnection;
  try {
    nc = await within(
      connectJobNats(config, { name: `blip2-status-${process.pid}`, timeoutMs }),
      timeoutMs + 1000,
      () => new NatsUnreachableError(`could not connect to NATS at ${url}: no answer within ${timeoutMs} ms`),
    );
  } catch (e) {
    if (e instanceof NatsUnreachableError) throw new CommandFailedError(`${e.message} (is the job's nats-server running? set nats.url)`);
    throw e;
  }
  try {
    const noAnswer = () => new CommandFailedError(`NATS at ${url} did not answer within ${timeoutMs} ms (is JetStream enabled?)`);
    let stored: Awaited<ReturnType<JobStore['read']>>;
    try {
      // Opening a bucket that does not exist succeeds; the read is what fails.
      const store = await within(JobStore.open(nc, jobId), timeoutMs, noAnswer);
      stored = await within(store.read(), timeoutMs, noAnswer);
    } catch (e) {
      if (e instanceof CommandFailedError) throw e;
      const msg = (e as Error).message ?? '';
      if (/not found|does not exist/i.test(msg)) {
        throw new UsageError(`job ${jobId}: no such job on NATS at ${url} (no KV bucket ${jobSubjects(jobId).bucket}; give its id with --job)`);
      }
      if (/jetstream not enabled|503|no responders/i.test(msg)) throw new CommandFailedError(`NATS at ${url}: JetStream is not enabled (${msg})`);
      throw e;
    }
    if (!stored) throw new UsageError(`job ${jobId}: its KV bucket on NATS at ${url} holds no state yet (has its coordinator started?)`);
    return statusReport(stored.state, config.train.epochs, o.now);
  } finally {
    await nc.close().catch(() => undefined);
  }
}

function fmtAge(seconds: number): string {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, '0')}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(seconds / 86400)}d${String(Math.floor((seconds % 86400) / 3600)).padStart(2, '0')}h`;
}

/** The report as the lines `blip2 status` prints. */
export function formatJobStatus(r: JobStatusReport): string {
  const world = r.world.length ? r.world.map((p) => `${p.rank}:${p.nodeId}`).join(' ') : '(none)';
  const c = r.committed;
  const commit = c
    ? `step ${c.step} (epoch ${c.epoch}), ${c.checkpointDir}, ${c.ageSeconds === null ? 'age unknown (checkpoint not readable here)' : `${fmtAge(c.ageSeconds)} ago`}`
    : 'none yet';
  return [
    `job ${r.jobId}: ${r.status}`,
    `  generation:   ${r.generation} (${r.reason || 'no change yet'})`,
    `  world:        ${r.world.length} rank(s): ${world}${r.members.length ? `; also registered: ${r.members.join(' ')}` : ''}`,
    `  epoch:        ${r.epoch}/${r.epochs}`,
    `  step:         ${r.step} (last committed)`,
    `  last commit:  ${commit}`,
    `  committed:    ${r.samplesCommitted} samples in ${r.commits} commit(s)`,
  ].join('\n');
}
