/**
 * `blip2 join`: starts one more trainer for a job that `blip2 launch` runs, from the run dir's files: the job's
 * config (`job.resolved.json`), the trainer's NATS user (`nats.json`, mode 0600) and the job token (`job.token`, or
 * BLIP2_JOB_TOKEN when the job's token was given, not generated). The trainer runs in the foreground, its output on
 * the console and in `<runDir>/logs/<node>.log`; the coordinator takes it in at the next commit. Ctrl-C stops it
 * (the job goes on without it).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { UsageError, type JobConfig } from '../common';
import { launchTokenFile } from './job-stop';

const repoRoot = resolve(import.meta.dirname, '..');

export interface JoinOptions {
  runDir: string;
  /** The job the run dir must hold (refused otherwise). */
  jobId?: string;
  /** The trainer's node id. Default: join-<host>-<4 hex digits>. */
  nodeId?: string;
  /** Trainer entry script, relative to the repository root (tests). */
  trainerEntry?: string;
  env?: NodeJS.ProcessEnv;
  say?: (line: string) => void;
}

const readJson = <T>(path: string): T => {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch (e) {
    throw new UsageError(`${path}: ${(e as Error).message}`);
  }
};

/** Runs the trainer until it exits; resolves with its exit status. */
export async function joinJob(o: JoinOptions): Promise<number> {
  const env = o.env ?? process.env;
  const say = o.say ?? ((l: string) => process.stdout.write(l + '\n'));
  const runDir = resolve(o.runDir);
  const jobFile = join(runDir, 'job.resolved.json');
  const natsFile = join(runDir, 'nats.json');
  if (!existsSync(jobFile)) {
    throw new UsageError(`${runDir}: no job.resolved.json and nats.json: join needs a job that \`blip2 launch\` runs from this run dir (--run-dir)`);
  }
  const config = readJson<JobConfig>(jobFile);
  if (o.jobId && config.job.id !== o.jobId) throw new UsageError(`${runDir} holds job ${config.job.id}, not ${o.jobId}`);
  const secrets: Record<string, string> = {};
  if (existsSync(natsFile)) {
    // The job's own nats-server: the trainer's user.
    const saved = readJson<{ url?: unknown; roles?: { trainer?: { user?: unknown; password?: unknown } } }>(natsFile);
    const t = saved.roles?.trainer;
    if (typeof saved.url !== 'string' || typeof t?.user !== 'string' || typeof t.password !== 'string') {
      throw new UsageError(`${natsFile}: needs url and roles.trainer (user, password), written by blip2 launch`);
    }
    Object.assign(secrets, { BLIP2_NATS_URL: saved.url, BLIP2_NATS_USER: t.user, BLIP2_NATS_PASSWORD: t.password });
  } else if (!config.nats.url) {
    throw new UsageError(`${natsFile} not found: the job's nats-server is not running (launch the job first)`);
  }
  // An external NATS: its credentials come from the environment (BLIP2_NATS_PASSWORD, …) as for launch.
  const tokenFile = launchTokenFile(runDir);
  const token = existsSync(tokenFile) ? readFileSync(tokenFile, 'utf8').trim() : env.BLIP2_JOB_TOKEN ?? '';
  if (!token) throw new UsageError(`no job token: ${tokenFile} does not exist (the job's token was given to launch): set BLIP2_JOB_TOKEN`);
  secrets.BLIP2_JOB_TOKEN = token;
  const nodeId = o.nodeId ?? `join-${hostname()}-${randomBytes(2).toString('hex')}`;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(nodeId)) throw new UsageError(`--node-id ${JSON.stringify(nodeId)}: letters, digits, '.', '_' and '-' only (at most 64)`);
  const entry = o.trainerEntry ?? 'trainer/main.ts';
  if (!existsSync(join(repoRoot, entry))) throw new UsageError(`trainer entry ${entry} not found in ${repoRoot}`);
  const logDir = join(runDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const logPath = join(logDir, `${nodeId}.log`);
  say(`blip2 join: trainer ${nodeId} for job ${config.job.id} (run dir ${runDir}); log ${logPath}; Ctrl-C stops it`);
  const log = createWriteStream(logPath, { flags: 'a' });
  const child = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, entry), '--config', jobFile], {
    cwd: repoRoot,
    env: { ...env, ...secrets, BLIP2_NODE_ID: nodeId, BLIP2_GRPC_PORT: '0', BLIP2_METRICS_PORT: '0', BLIP2_SUPERVISOR_PID: String(process.pid) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  for (const s of [child.stdout!, child.stderr!]) {
    s.on('data', (d: Buffer) => {
      log.write(d);
      process.stdout.write(d);
    });
  }
  const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  const code = await new Promise<number>((r) => child.once('exit', (c, sig) => r(c ?? (sig ? 128 + 15 : 1))));
  process.off('SIGINT', onInt);
  process.off('SIGTERM', onTerm);
  await new Promise<void>((r) => log.end(r));
  say(`blip2 join: trainer ${nodeId} exited with code ${code}`);
  return code;
}
