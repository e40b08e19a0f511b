// `blip2 stop`: asks a job's coordinator, over the job's NATS, to end the job at its next commit (its final
// checkpoint), then waits until the job state says it has ended. The request carries the job token: job.token
// (config, BLIP2_JOB_TOKEN or --job.token), else the one `blip2 launch` generated and left in <runDir>/job.token.
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { connectJobNats, jobSubjects, UsageError, type JobConfig } from '../common';
import { JobStore, type ControlReply, type JobState } from '../coordinator/client';
import { CommandFailedError } from './errors';
import { readJobStatus } from './job-status';

/** Where `blip2 launch` leaves a token it generated (mode 0600), for `blip2 stop` on the same machine. */
export const launchTokenFile = (runDir: string) => join(runDir, 'job.token');

export interface StopJobOptions {
  /** Job id; default config.job.id. */
  jobId?: string;
  /** Wait until the job has ended. Default: true. */
  wait?: boolean;
  /** Lines of progress. */
  say?: (line: string) => void;
}

export interface StopJobResult {
  /** `already-finished`: nothing to stop; `requested`: asked, not waited for; `stopped`: the job has ended. */
  outcome: 'already-finished' | 'requested' | 'stopped';
  state: { reason: string; step: number; checkpointDir: string | null } | null;
}

function jobToken(config: JobConfig): string {
  if (config.job.token) return config.job.token;
  const file = launchTokenFile(config.job.runDir);
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  throw new UsageError(`job ${config.job.id}: no job token to stop it with: set job.token, BLIP2_JOB_TOKEN or --job.token (none in ${file} either)`);
}

/** Asks the job to stop and (by default) waits until it has ended. */
export async function stopJob(config: JobConfig, o: StopJobOptions = {}): Promise<StopJobResult> {
  const jobId = o.jobId ?? config.job.id;
  const say = o.say ?? (() => {});
  // The job must exist (exit 2 otherwise) and NATS answer (exit 1 otherwise), as for `blip2 status`.
  const report = await readJobStatus(config, { jobId });
  if (report.status === 'finished') {
    return { outcome: 'already-finished', state: { reason: report.reason, step: report.step, checkpointDir: report.committed?.checkpointDir ?? null } };
  }
  const token = jobToken(config);
  const nc = await connectJobNats(config, { name: `blip2-stop-${process.pid}` });
  try {
    const store = await JobStore.open(nc, jobId);
    let resolveEnd!: (s: JobState) => void;
    const ended = new Promise<JobState>((r) => (resolveEnd = r));
    const stopWatch = await store.watch(({ state }) => {
      if (state.status === 'finished') resolveEnd(state);
    });
    try {
      let reply: ControlReply;
      try {
        const msg = await nc.request(jobSubjects(jobId).control, JSON.stringify({ type: 'stop', token, nodeId: `blip2 stop (${hostname()})` }), { timeout: 10_000 });
        reply = msg.json<ControlReply>();
      } catch (e) {
        throw new CommandFailedError(`job ${jobId}: its coordinator did not answer (${(e as Error).message}); is the job running?`);
      }
      if (!reply.ok) {
        if (reply.code === 'auth') throw new UsageError(reply.message);
        if (/has finished/.test(reply.message)) return { outcome: 'already-finished', state: null };
        throw new CommandFailedError(`job ${jobId}: stop refused: ${reply.message}`);
      }
      say(`job ${jobId}: stop requested; it ends at its next committed checkpoint`);
      if (o.wait === false) return { outcome: 'requested', state: null };
      const s = await ended;
      return { outcome: 'stopped', state: { reason: s.reason, step: s.committed?.step ?? 0, checkpointDir: s.committed?.checkpointDir ?? null } };
    } finally {
      stopWatch();
    }
  } finally {
    await nc.close().catch(() => undefined);
  }
}
