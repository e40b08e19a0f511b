/**
 * `blip2 launch` with target `local`: runs a whole job on this machine.
 *
 *  1. Resolve the config (file < env < flags); with no file, the built-in demo (synthetic data, `tiny`, 2 trainers).
 *  2. Data: with no data.root configured and no index there, generate the synthetic dataset into <runDir>/data.
 *  3. NATS: with nats.url empty, start a nats-server whose JetStream store is <runDir>/nats, so launching the same
 *     run again continues the job where it stopped (the job state lives in its KV bucket).
 *  4. Write <runDir>/job.resolved.json (secrets left out: they travel in the children's environment) and start the
 *     coordinator and world.trainers trainer processes; their logs go to <runDir>/logs/<node>.log.
 *  5. Show progress from rank 0's reports (a bar on a terminal, plain lines otherwise; progress.ts) and the job
 *     state until the job ends or is stopped.
 *  6. End with a summary (<runDir>/summary.json and the closing lines).
 *  Ctrl-C: wait for the next committed checkpoint, then stop every process (a second Ctrl-C stops at once).
 *  Meanwhile it supervises what it started (supervisor.ts): a trainer, the coordinator or the nats-server that dies
 *  before the job ends is restarted (launch.restarts, launch.backoffMs); <runDir>/launch.lock lets the next launch
 *  stop what a killed launcher left behind.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, join, resolve } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { Blip2Error, connectJobNats, jobSubjects, loadJobConfig, safetensorsNames, UsageError, type JobConfig } from '../common';
import { JobStore, parseProgressReport, type JobState, type ProgressReport, type StoredState } from '../coordinator/client';
import { loadJobIndex, samplesPerEpoch } from '../coordinator';
import { describeIndex, missingTokenizerMessage, writeSynthDataset } from '../dataloader';
import { loadModelConfig } from '../trainer/model';
import { resolveWeights } from '../trainer';
import { checkCommittedCheckpoint, removeStaleCheckpointTemporaries, rewindJobState } from './checkpoint-guard';
import { launchTokenFile } from './job-stop';
import { freePort, jobNatsPermissions, startNatsServer, type NatsRole, type NatsServerHandle, type NatsUser } from './nats-server';
import { createProgressView, fmtDuration, fmtLosses } from './progress';
import { LaunchLock, Supervisor, restartsReset } from './supervisor';
import { DEMO_OVERRIDES, natsFileOf } from './defaults';

export { DEMO_OVERRIDES, natsFileOf };

const repoRoot = resolve(import.meta.dirname, '..');

export interface LaunchOptions {
  /** Job config file. Default: none (the built-in demo). */
  configFile?: string;
  /** Config flags (`--train.epochs 3`). */
  configArgs?: string[];
  /** Trainer entry script, relative to the repository root. Default: trainer/main.ts. */
  trainerEntry?: string;
  /** Where progress goes. Default: process.stdout. */
  out?: NodeJS.WritableStream;
  /** Environment the config reads. Default: process.env. */
  env?: NodeJS.ProcessEnv;
  /** Stop (after the next commit) when this signal aborts; Ctrl-C does the same. */
  signal?: AbortSignal;
  /** Settings under the flags and environment when no config file is given. Default: DEMO_OVERRIDES. */
  overrides?: Record<string, unknown>;
  /** What the first line calls the job when no config file is given. Default: "built-in demo". */
  title?: string;
}

export interface LaunchSummary {
  status: JobState['status'] | 'stopped' | 'failed';
  jobId: string;
  runDir: string;
  checkpointDir: string | null;
  step: number;
  epochs: number;
  samples: number;
  losses: Record<string, number>;
  generations: number;
  wallSeconds: number;
  /** Samples the trainers skipped (bad images, captions, truncated tars), by reason, from their metrics JSONL. */
  skipped: Record<string, number>;
}

/** A sleep that does not keep the process alive. */
const unrefSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());


type Say = (line: string) => void;

/** Runs a whole job on this machine (the steps at the top of this file); resolves with its summary. */
export async function launchLocal(o: LaunchOptions = {}): Promise<LaunchSummary> {
  const out = o.out ?? process.stdout;
  const say: Say = (line) => out.write(line + '\n');
  // 1. Config and run dir.
  const { config: c, generatedToken } = resolveLaunchConfig(o);
  const t0 = Date.now();
  const { summaryPath, logDir } = prepareRunDir(c, o, say);
  // A token generated for this run is left (0600) where `blip2 stop` looks for it.
  if (generatedToken) writeFileSync(launchTokenFile(c.job.runDir), c.job.token + '\n', { mode: 0o600 });
  else rmSync(launchTokenFile(c.job.runDir), { force: true });
  // 2. Data.
  const samplesPerEpoch = await prepareData(c, say);
  checkStage(c, say);

  // Nothing of an earlier launch may still run on this run dir: a live launcher is refused, a killed one's
  // processes are stopped (launch.lock).
  const lock = await LaunchLock.acquire(c.job.runDir, say);
  // No process of the job runs now: a temporary checkpoint directory is what a killed writer left.
  const stale = removeStaleCheckpointTemporaries(c.checkpoint.dir);
  if (stale.length) say(`removed ${stale.length} unfinished checkpoint director${stale.length === 1 ? 'y' : 'ies'} a killed writer left: ${stale.join(', ')}`);
  let ended = false;
  const supervisor = new Supervisor({
    restarts: c.launch.restarts, backoffMs: c.launch.backoffMs, restartsResetMs: c.launch.restartsResetMs, logDir, say: (l) => sayNow(l), lock,
    keepGoing: () => !ended, lastLines,
  });
  // The console line writer: plain lines until the progress view takes over (followJob).
  let sayNow: Say = say;

  // 3. NATS.
  let nats: SupervisedNats | undefined;
  let natsUrl = c.nats.url;
  let roles: Record<NatsRole, { user: string; password: string }> | undefined;
  if (!natsUrl) {
    // The job's own server requires a user per role, each limited to what its role does: no other local process can
    // read or change the job, and no trainer can write the job's state.
    roles = jobNatsCredentials(c);
    nats = await superviseNats(c, roles, { lock, say: (l) => sayNow(l), stopped: () => ended, logDir, gone: (e) => supervisor.fail(e) });
    natsUrl = nats.server.url;
    Object.assign(c.nats, { user: roles.launcher.user, password: roles.launcher.password, token: '', credsFile: '' });
    writeFileSync(natsFileOf(c), JSON.stringify({ url: natsUrl, ...roles.launcher, roles }, null, 2) + '\n', { mode: 0o600 });
    say(`nats-server started at ${natsUrl} (JetStream store ${nats.server.storeDir}; users for the coordinator, the trainers and the launcher in ${natsFileOf(c)})`);
  }
  let nc: NatsConnection | undefined;
  const cleanup = async () => {
    ended = true;
    await supervisor.stopAll();
    await nc?.close().catch(() => undefined);
    await nats?.stop();
    lock.release();
  };

  try {
    if (!nats) say(`connecting to NATS at ${natsUrl}`);
    nc = await connectJobNats(c, { url: natsUrl, name: 'blip2-launch' });
    // The launcher only reads the job's bucket (its NATS user may not write it); a new job's is created here with a
    // user that may, so that it exists before any process starts.
    const store = (await openJobStore(nc, c.job.id)) ?? (await createJobBucket(c, { nc, natsUrl, roles }));
    let previous = await store.read();
    if (previous?.state.status === 'finished') {
      throw new UsageError(`job ${c.job.id} in ${c.job.runDir} has already finished (checkpoint ${previous.state.committed?.checkpointDir ?? 'none'}); choose another job.id or remove the run dir`);
    }
    if (previous) say(`continuing job ${c.job.id}: epoch ${previous.state.epoch}, committed step ${previous.state.committed?.step ?? 0}`);
    // The committed checkpoint must restore: one that fails a checksum sends the job back to the previous valid one.
    if (previous) previous = await guardCommittedCheckpoint(c, previous, { nc, natsUrl, roles, say });
    // While the job runs: a trainer that exits for bad input (2) may have found the committed checkpoint corrupt. When
    // it is, restarting trainers would fail again: the supervisor stops every process, the job state goes back to
    // the previous valid checkpoint (as at a relaunch, above), and every process starts again.
    const conn = nc;
    const url = natsUrl;
    supervisor.checkpointGuard = async () => {
      let now: StoredState | null;
      try {
        now = await Promise.race([store.read(), unrefSleep(5000).then(() => { throw new Error('timeout'); })]);
      } catch {
        return undefined; // the job state cannot be read now (NATS down): a plain restart
      }
      if (!checkCommittedCheckpoint(now?.state.committed ?? null)) return undefined;
      return async () => {
        const fresh = await store.read();
        if (fresh) await guardCommittedCheckpoint(c, fresh, { nc: conn, natsUrl: url, roles, say: (l) => sayNow(l) });
      };
    };
    // 4. Processes.
    await startProcesses(c, o, { natsUrl, logDir, supervisor, roles, say });
    // 5. Progress, until the job ends or is stopped.
    const end = await followJob(c, o, {
      nc, store, previous: previous?.state ?? null, supervisor, logDir, samplesPerEpoch, say,
      setSay: (f) => (sayNow = f), onEnd: () => (ended = true),
    });
    // 6. Summary.
    return writeSummary(c, { ...end, t0, summaryPath, firstSamples: previous?.state.committed?.samples ?? 0, say });
  } finally {
    await cleanup();
  }
}

const ROLES: NatsRole[] = ['coordinator', 'trainer', 'launcher'];

/** The job's NATS users, one per role: generated at the first launch, then kept (in nats.json) so that a relaunch uses the same. */
function jobNatsCredentials(c: JobConfig): Record<NatsRole, { user: string; password: string }> {
  let saved: { roles?: Partial<Record<NatsRole, { user?: unknown; password?: unknown }>> } = {};
  try {
    saved = JSON.parse(readFileSync(natsFileOf(c), 'utf8')) as typeof saved;
  } catch {
    // none yet, or unreadable: new users below
  }
  const out = {} as Record<NatsRole, { user: string; password: string }>;
  for (const role of ROLES) {
    const r = saved.roles?.[role];
    out[role] = typeof r?.user === 'string' && typeof r.password === 'string' && r.user && r.password
      ? { user: r.user, password: r.password }
      : { user: `blip2-${c.job.id}-${role}`, password: randomBytes(24).toString('hex') };
  }
  return out;
}

/**
 * A relaunch whose committed checkpoint fails its checks (a checksum, a missing file): the job state goes back to
 * the newest older checkpoint that passes them (written with compare-and-set, by a user that may write the job
 * state: on the job's own nats-server, the coordinator's), and the console says so. None left: refused.
 */
async function guardCommittedCheckpoint(
  c: JobConfig, previous: StoredState,
  x: { nc: NatsConnection; natsUrl: string; roles?: Record<NatsRole, { user: string; password: string }>; say: Say },
): Promise<StoredState> {
  const committed = previous.state.committed;
  const check = checkCommittedCheckpoint(committed);
  if (!check || !committed) return previous;
  if (!check.fallback) {
    throw new Blip2Error(`the committed checkpoint ${committed.checkpointDir} cannot be restored (${check.problem}), and no older checkpoint next to it can: the job cannot continue; start a new job (another job.id)`);
  }
  const fb = check.fallback;
  const why = `checkpoint ${basename(committed.checkpointDir)} failed its checks; restored the previous valid one, ${basename(fb.checkpointDir)}`;
  const writer = x.roles
    ? await connectJobNats({ ...c, nats: { ...c.nats, ...x.roles.coordinator } }, { url: x.natsUrl, name: 'blip2-launch-rewind' })
    : x.nc;
  try {
    const store = await JobStore.open(writer, c.job.id);
    const state = rewindJobState(previous.state, fb, why);
    const revision = await store.compareAndSet(state, previous.revision);
    x.say(`the committed checkpoint ${committed.checkpointDir} (step ${committed.step}) fails its checks: ${check.problem}`);
    x.say(`going back to the previous valid checkpoint ${fb.checkpointDir} (step ${fb.step}, epoch ${fb.epoch + 1}); the steps after it are trained again`);
    return { state, revision };
  } finally {
    if (writer !== x.nc) await writer.close().catch(() => undefined);
  }
}

/** The job's nats-server and its supervision: restarted on the same port, store and users when it dies. */
interface SupervisedNats {
  server: NatsServerHandle;
  stop(): Promise<void>;
}

async function superviseNats(
  c: JobConfig, roles: Record<NatsRole, { user: string; password: string }>,
  x: { lock: LaunchLock; say: Say; stopped: () => boolean; logDir: string; gone: (e: Error) => void },
): Promise<SupervisedNats> {
  const subjects = jobSubjects(c.job.id);
  const users: NatsUser[] = ROLES.map((role) => ({ ...roles[role], permissions: jobNatsPermissions(role, subjects) }));
  const storeDir = join(c.job.runDir, 'nats');
  const logFile = join(x.logDir, 'nats-server.log');
  let stopping = false;
  let restarts = 0;
  const start = async (port?: number): Promise<NatsServerHandle> => {
    const server = await startNatsServer({ storeDir, detached: true, users, logFile, ...(port ? { port } : {}) });
    if (server.process.pid) x.lock.set({ name: 'nats-server', pid: server.process.pid, mark: 'nats-server' });
    const startedAt = Date.now();
    server.process.once('exit', (code, signal) => {
      if (restarts > 0 && restartsReset(startedAt, c.launch.restartsResetMs)) restarts = 0; // up long enough: a new series
      void onExit(code, signal);
    });
    return server;
  };
  const h: SupervisedNats = {
    server: await start(),
    async stop() {
      stopping = true;
      await h.server.stop();
    },
  };
  const onExit = async (code: number | null, signal: NodeJS.Signals | null) => {
    if (stopping || x.stopped()) return;
    const how = code !== null ? `exited with code ${code}` : `was killed by ${signal}`;
    while (!stopping && !x.stopped()) {
      if (restarts >= c.launch.restarts) {
        x.gone(new Blip2Error(`the job's nats-server ${how} and was not restarted (launch.restarts is ${c.launch.restarts}); its log: ${logFile}`));
        return;
      }
      restarts++;
      const wait = Math.min(30_000, c.launch.backoffMs * 2 ** (restarts - 1));
      x.say(`nats-server ${how}; restarting it on port ${h.server.port} with the same store in ${(wait / 1000).toFixed(1)} s (restart ${restarts} of ${c.launch.restarts})`);
      await unrefSleep(wait);
      if (stopping || x.stopped()) return;
      try {
        h.server = await start(h.server.port);
        x.say(`nats-server restarted at ${h.server.url}`);
        return;
      } catch (e) {
        x.say(`nats-server did not start again: ${(e as Error).message.split('\n')[0]}`);
      }
    }
  };
  return h;
}

/** The job's KV bucket, or null when no coordinator has created it yet. */
async function openJobStore(nc: NatsConnection, jobId: string): Promise<JobStore | null> {
  try {
    const store = await JobStore.open(nc, jobId);
    await store.read(); // opening does not look: a bucket that does not exist shows here
    return store;
  } catch (e) {
    if (/not found/i.test((e as Error).message ?? '')) return null;
    throw e;
  }
}

/**
 * Creates a new job's KV bucket (as the coordinator would) with a user that may: the coordinator's on the job's own
 * nats-server, the configured one otherwise. Returns it opened on the launcher's own (read-only) connection.
 */
async function createJobBucket(
  c: JobConfig, x: { nc: NatsConnection; natsUrl: string; roles?: Record<NatsRole, { user: string; password: string }> },
): Promise<JobStore> {
  const writer = x.roles
    ? await connectJobNats({ ...c, nats: { ...c.nats, ...x.roles.coordinator } }, { url: x.natsUrl, name: 'blip2-launch-create' })
    : x.nc;
  try {
    await JobStore.open(writer, c.job.id, { create: true });
  } finally {
    if (writer !== x.nc) await writer.close().catch(() => undefined);
  }
  return JobStore.open(x.nc, c.job.id);
}

/** Step 1: the job config (file < env < flags; with no file, the demo's settings), a token for this run. */
function resolveLaunchConfig(o: LaunchOptions): { config: JobConfig; generatedToken: boolean } {
  const env = o.env ?? process.env;
  const { config } = loadJobConfig({ file: o.configFile, env, argv: o.configArgs ?? [], overrides: o.configFile ? {} : o.overrides ?? DEMO_OVERRIDES });
  const generatedToken = !config.job.token;
  if (generatedToken) config.job.token = randomBytes(16).toString('hex'); // this run's secret
  if (config.launch.target !== 'local') {
    throw new UsageError(`launch.target ${JSON.stringify(config.launch.target)}: this launch runs the job here; for Kubernetes write its manifests with \`blip2 launch --target kubernetes --render-dir DIR\` (then \`kubectl apply -f DIR\`), or set launch.target local`);
  }
  if (config.model.config) loadModelConfig(config.model.config); // a bad model config.json is refused here, not by every trainer
  if (config.world.trainers < config.world.min) {
    throw new UsageError(`world.trainers is ${config.world.trainers}, below world.min ${config.world.min}: the job would wait for ever for trainers this launch never starts; raise world.trainers or lower world.min`);
  }
  return { config, generatedToken };
}

/** The checkpoint directory must take a file now, not at the first commit (where the error would reach only the logs). */
function checkWritable(dir: string, key: string): void {
  const probe = join(dir, `.write-probe-${process.pid}`);
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(probe, '');
    rmSync(probe, { force: true });
  } catch (e) {
    throw new UsageError(`${key} ${dir} is not writable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); checkpoints could not be committed`);
  }
}

/** Step 1: the run dir and its logs/ (a finished demo run is started afresh; a finished job is refused). */
function prepareRunDir(c: JobConfig, o: LaunchOptions, say: Say): { summaryPath: string; logDir: string } {
  const summaryPath = join(c.job.runDir, 'summary.json');
  if (existsSync(summaryPath) && (JSON.parse(readFileSync(summaryPath, 'utf8')) as LaunchSummary).status === 'finished') {
    if (o.configFile) {
      throw new UsageError(`job ${c.job.id} in ${c.job.runDir} has already finished (see ${summaryPath}); choose another job.id or job.runDir, or remove the run dir`);
    }
    say(`the previous demo run in ${c.job.runDir} finished; starting a new one`);
    rmSync(c.job.runDir, { recursive: true, force: true });
  }
  mkdirSync(c.job.runDir, { recursive: true });
  const logDir = join(c.job.runDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  checkWritable(c.checkpoint.dir, 'checkpoint.dir');
  say(`blip2 launch: job ${c.job.id} (${o.configFile ? `config ${o.configFile}` : o.title ?? 'built-in demo'}), run dir ${c.job.runDir}`);
  return { summaryPath, logDir };
}

/** Step 2: the dataset's index (the synthetic dataset generated into <runDir>/data when there is none); samples per epoch. */
async function prepareData(c: JobConfig, say: Say): Promise<number> {
  const indexPath = join(c.data.root, 'index.json');
  if (!existsSync(indexPath)) {
    if (c.data.root !== join(c.job.runDir, 'data')) throw new UsageError(`data.root ${c.data.root}: no index.json (write one with \`blip2 data index\` or \`blip2 data synth\`)`);
    say(`generating the synthetic dataset (${c.data.synthSamples} samples, ${c.data.synthImageSize}px) into ${c.data.root}`);
    await writeSynthDataset({ out: c.data.root, samples: c.data.synthSamples, shardSize: c.data.samplesPerShard * 2, imageSize: c.data.synthImageSize, seed: c.train.seed });
  }
  // Refused here, before any process starts: no dataset to train on, no sample in it, a shard file missing; then no
  // Q-Former tokenizer (with how to make one).
  const index = loadJobIndex(c);
  if (!existsSync(c.data.tokenizer)) throw new UsageError(missingTokenizerMessage(c.data.tokenizer, c.data.root));
  say(describeIndex(index, c.data.datasets));
  return samplesPerEpoch(c, index);
}

/** Step 2: what the stage needs that only files can tell, checked before any process starts. */
function checkStage(c: JobConfig, say: Say): void {
  if (c.train.stage !== 2) return;
  if (!existsSync(c.data.lmTokenizer)) {
    throw new UsageError(`data.lmTokenizer ${c.data.lmTokenizer}: not found; stage 2 needs the language model's tokenizer.json (\`blip2 data synth\` writes opt-tokenizer/ for the synthetic data; for real data, the OPT checkpoint's)`);
  }
  const from = c.model.checkpoint ? resolveWeights(c.model.checkpoint) : undefined;
  if (!from) say('stage 2 from scratch: model.checkpoint is empty, so the Q-Former starts untrained (the paper\'s ablation without stage 1)');
  else say(`stage 2 from ${from.checkpoint ? `the stage-${from.checkpoint.stage} checkpoint ${from.checkpoint.dir}` : from.files.join(', ')}`);
  const lm = c.model.languageModel ? resolveWeights(c.model.languageModel).files : from && !from.checkpoint && from.files.some((f) => safetensorsNames(f).some((n) => n.startsWith('language_model.'))) ? from.files : undefined;
  if (lm) say(`frozen language model: ${lm.join(', ')}`);
  else say('warning: model.languageModel is empty: the frozen language model is random and knows no language, so the LM loss can hardly fall (train one with `blip2 pretrain-lm`)');
}

/**
 * Step 4: <runDir>/job.resolved.json (secrets left out: they travel in the children's environment), then the
 * coordinator and world.trainers trainers, each logging to <runDir>/logs/<node>.log. Resolves (once started) with
 * the coordinator's exit.
 */
async function startProcesses(
  c: JobConfig, o: LaunchOptions,
  x: { natsUrl: string; logDir: string; supervisor: Supervisor; roles?: Record<NatsRole, { user: string; password: string }>; say: Say },
): Promise<void> {
  const { natsUrl, logDir, supervisor, roles, say } = x;
  // Never the user's own config file: its nats.url must stay as written, or a relaunch would look for this run's
  // nats-server.
  const resolved = JSON.parse(JSON.stringify(c)) as JobConfig;
  resolved.job.token = '';
  resolved.nats = { ...resolved.nats, url: natsUrl, password: '', token: '' };
  const jobFile = join(c.job.runDir, 'job.resolved.json');
  if (o.configFile && resolve(o.configFile) === jobFile) throw new UsageError(`--config ${o.configFile}: that name is the launcher's own output; rename the file`);
  writeFileSync(jobFile, JSON.stringify(resolved, null, 2) + '\n');
  const secrets: Record<string, string> = { BLIP2_JOB_TOKEN: c.job.token };
  if (c.nats.user) secrets.BLIP2_NATS_USER = c.nats.user;
  if (c.nats.password) secrets.BLIP2_NATS_PASSWORD = c.nats.password;
  if (c.nats.token) secrets.BLIP2_NATS_TOKEN = c.nats.token;
  // On the job's own nats-server each role has its own user (jobNatsPermissions).
  const roleEnv = (role: NatsRole): Record<string, string> => (roles ? { BLIP2_NATS_USER: roles[role].user, BLIP2_NATS_PASSWORD: roles[role].password } : {});
  const start = (name: string, entry: string, extraEnv: Record<string, string>) => {
    const log = createWriteStream(join(logDir, `${name}.log`), { flags: 'a' });
    const kind = name === 'coordinator' ? 'coordinator' : 'trainer';
    supervisor.start(name, kind, entry, () => {
      const proc = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, entry), '--config', jobFile], {
        cwd: repoRoot,
        env: { ...process.env, ...secrets, ...roleEnv(kind), BLIP2_NODE_ID: name, BLIP2_SUPERVISOR_PID: String(process.pid), ...extraEnv },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true, // its own process group: the terminal's Ctrl-C reaches only the launcher, which stops it after a commit
      });
      proc.stdout!.pipe(log, { end: false });
      proc.stderr!.pipe(log, { end: false });
      return proc;
    });
  };
  const trainerEntry = o.trainerEntry ?? 'trainer/main.ts';
  if (!existsSync(join(repoRoot, trainerEntry))) throw new UsageError(`trainer entry ${trainerEntry} not found in ${repoRoot}`);
  // Metrics ports: metrics.port, metrics.port + 1, ... or, with 0, free ports chosen here so they can be shown.
  const metricsPorts: number[] = [];
  for (let i = 0; i <= c.world.trainers; i++) metricsPorts.push(c.metrics.port ? c.metrics.port + i : await freePort());
  const port = (base: number, i: number) => String(base ? base + i : 0);
  start('coordinator', 'coordinator/main.ts', { BLIP2_METRICS_PORT: String(metricsPorts[0]) });
  // The trainers share this machine's cores: each engine gets its share of threads (more threads than cores,
  // across processes, made a 2-trainer step ten times slower than a 1-trainer one on 2 cores). An explicit
  // BLIP2_ENGINE_THREADS wins.
  const engineThreads = (o.env ?? process.env).BLIP2_ENGINE_THREADS ?? String(Math.max(1, Math.floor(availableParallelism() / c.world.trainers)));
  for (let i = 0; i < c.world.trainers; i++) {
    start(`trainer-${i}`, trainerEntry, {
      BLIP2_GRPC_PORT: port(c.grpc.port, i), BLIP2_METRICS_PORT: String(metricsPorts[i + 1]), BLIP2_ENGINE_THREADS: engineThreads,
    });
  }
  say(`started the coordinator and ${c.world.trainers} trainer(s); logs in ${logDir}`);
  if (c.metrics.enabled) {
    say(`metrics: coordinator http://${c.metrics.host}:${metricsPorts[0]}/metrics, trainers ${metricsPorts.slice(1).map((p) => `:${p}`).join(' ')}`);
  }
}

interface JobEnd {
  status: LaunchSummary['status'];
  state: JobState | null;
  last: ProgressReport | null;
}

/**
 * Step 5: prints rank 0's progress reports and the generations as they change, until the job finishes, is
 * stopped (Ctrl-C after the next commit, a second one or SIGTERM/SIGHUP at once) or fails (the coordinator cannot
 * be restarted, or every trainer this launch started is gone for good while no other member is in the job).
 */
async function followJob(
  c: JobConfig, o: LaunchOptions,
  x: {
    nc: NatsConnection; store: JobStore; previous: JobState | null; supervisor: Supervisor;
    logDir: string; samplesPerEpoch: number; say: Say; setSay: (say: Say) => void; onEnd: () => void;
  },
): Promise<JobEnd> {
  const { nc, store, supervisor, logDir } = x;
  let state: JobState | null = x.previous;
  let last: ProgressReport | null = null;
  let generationSeen = state?.generation ?? 0;
  // A bar on a terminal (other lines above it), plain lines otherwise.
  const view = createProgressView({ out: o.out ?? process.stdout, epochs: c.train.epochs, totalSamples: x.samplesPerEpoch * c.train.epochs, maxSteps: c.train.maxSteps });
  const say: Say = (line) => view.log(line);
  x.setSay(say);
  // Progress reports are display only (the job's status, commits and ledger come from KV): each one is validated and
  // must come from a registered member; anything else is ignored with a note (at most one per 10 s).
  let ignored = 0;
  let ignoredNoted = 0;
  const ignore = (why: string) => {
    ignored++;
    if (Date.now() - ignoredNoted < 10_000) return;
    ignoredNoted = Date.now();
    say(`ignored a progress report (${ignored} so far): ${why}`);
  };
  const progressSub = nc.subscribe(jobSubjects(c.job.id).progress, {
    callback: (err, msg) => {
      if (err) return;
      try {
        const parsed = parseProgressReport(msg.data);
        if (!parsed.ok) return ignore(parsed.message);
        const r = parsed.value;
        const s = state as JobState | null;
        if (s && !s.members.some((m) => m.nodeId === r.nodeId)) return ignore(`from ${JSON.stringify(r.nodeId).slice(0, 80)}, not a member of the job`);
        last = r;
        view.report(r);
      } catch (e) {
        ignore(`the display failed: ${(e as Error).message}`);
      }
    },
  });
  let finished!: () => void;
  const finishedP = new Promise<void>((r) => (finished = r));
  // Every trainer this launch started gone for good: the job fails, unless members it did not start (`blip2 join`)
  // are still in it.
  let trainersFailed!: (e: Error) => void;
  const trainersGone = new Promise<never>((_, reject) => (trainersFailed = reject));
  const ours = new Set(supervisor.procs.map((p) => p.name));
  let othersNoted = false;
  const checkTrainers = () => {
    if (!supervisor.trainersGone() || (state as JobState | null)?.status === 'finished') return;
    const others = ((state as JobState | null)?.members ?? []).filter((m) => !ours.has(m.nodeId));
    if (others.length) {
      if (!othersNoted) say(`every trainer this launch started has exited; following the job with ${others.length} other member(s): ${others.map((m) => m.nodeId).join(', ')}`);
      othersNoted = true;
      return;
    }
    trainersFailed(new Blip2Error(`every trainer exited before the job finished; see the logs in ${logDir}`));
  };
  const offGone = supervisor.onGone(checkTrainers);
  let commitSeen = state?.committed?.step ?? 0;
  let onCommit: (() => void) | undefined;
  let waitingFor = '';
  const stopWatch = await store.watch(({ state: s }) => {
    state = s;
    // What a waiting job waits for, whenever that changes.
    const waits = s.status !== 'waiting' ? ''
      : s.members.length < c.world.min ? `waiting for trainers: ${s.members.length} of world.min ${c.world.min} registered`
        : `forming the world: ${s.members.length} trainer(s) registered, waiting up to ${c.world.rendezvousSettleMs} ms for more`;
    if (waits && waits !== waitingFor) say(waits);
    waitingFor = waits;
    if (s.generation !== generationSeen) {
      generationSeen = s.generation;
      say(`generation ${s.generation}: ${s.status === 'running' ? `world of ${s.world.length} [${s.world.map((p) => p.nodeId).join(', ')}]` : s.status} (${s.reason})`);
    }
    if ((s.committed?.step ?? 0) > commitSeen) {
      commitSeen = s.committed!.step;
      onCommit?.();
    }
    if (s.status === 'finished') {
      x.onEnd(); // nothing is restarted once the job has ended
      finished();
    }
    checkTrainers();
  }, (why) => say(`warning: ${why}`));

  // Ctrl-C: stop after the next commit.
  let stopRequested = false;
  let stopNow!: () => void;
  const stopped = new Promise<void>((r) => (stopNow = r));
  const requestStop = () => {
    if (stopRequested) {
      say('second interrupt: stopping now');
      return stopNow();
    }
    stopRequested = true;
    say('stopping after the next committed checkpoint (Ctrl-C again to stop now)');
    onCommit = () => {
      say(`checkpoint at step ${commitSeen} committed: stopping`);
      stopNow();
    };
  };
  process.on('SIGINT', requestStop);
  // SIGTERM / SIGHUP (a supervisor, a closed terminal): stop now; the children are stopped in cleanup().
  const terminate = (sig: string) => {
    say(`${sig}: stopping now`);
    stopRequested = true;
    x.onEnd();
    stopNow();
  };
  const onTerm = () => terminate('SIGTERM');
  const onHup = () => terminate('SIGHUP');
  process.on('SIGTERM', onTerm);
  process.on('SIGHUP', onHup);
  o.signal?.addEventListener('abort', requestStop, { once: true });
  checkTrainers();
  let status: LaunchSummary['status'];
  try {
    await Promise.race([finishedP, stopped, supervisor.failed(), trainersGone]);
    const ended = state as JobState | null;
    status = ended?.status === 'finished' && !ended.stopRequested ? 'finished' : 'stopped';
    if (status === 'finished') view.complete();
    if (ended?.status === 'finished') {
      if (ended.stopRequested) say(`job ${ended.reason}`);
      // Let the processes see the end and exit by themselves.
      await supervisor.allExited(15_000);
    }
  } catch (e) {
    // The job's truth is in KV: a job that finished (or was stopped) is not reported failed because a process died.
    const now = await store.read().then((r) => r?.state ?? null, () => null);
    if (now) state = now;
    if (now?.status === 'finished') {
      say(`note: ${(e as Error).message}`);
      status = now.stopRequested ? 'stopped' : 'finished';
    } else {
      say(`job failed: ${(e as Error).message}`);
      status = 'failed';
    }
  } finally {
    x.onEnd();
    offGone();
    process.off('SIGINT', requestStop);
    process.off('SIGTERM', onTerm);
    process.off('SIGHUP', onHup);
    stopWatch();
    progressSub.unsubscribe();
    view.stop();
  }
  return { status, state: state as JobState | null, last: last as ProgressReport | null };
}

/** The last lines of a process's log that say what went wrong (error and warning lines first), indented. */
function lastLines(path: string, n = 8): string {
  let lines: string[];
  try {
    lines = readFileSync(path, 'utf8').split('\n').filter((l) => l.trim());
  } catch (e) {
    return `    (log not readable: ${(e as Error).message})`;
  }
  // Warnings and errors, and always the last line (a process's closing message, e.g. a bad input's, says neither).
  const isBad = (l: string) => /\b(error|fatal|warn)\b|Error\b/i.test(l);
  const bad = lines.filter((l, i) => isBad(l) || (i === lines.length - 1 && lines.some(isBad)));
  return (bad.length ? bad : lines).slice(-n).map((l) => `    ${l.length > 400 ? l.slice(0, 400) + '…' : l}`).join('\n');
}

/** Step 6: <runDir>/summary.json and the closing lines. */
function writeSummary(
  c: JobConfig, x: JobEnd & { t0: number; summaryPath: string; firstSamples: number; say: Say },
): LaunchSummary {
  const { state: s, last: lastReport, say } = x;
  const summary: LaunchSummary = {
    status: x.status,
    jobId: c.job.id,
    runDir: c.job.runDir,
    checkpointDir: s?.committed?.checkpointDir ?? null,
    step: s?.committed?.step ?? 0,
    epochs: s ? (s.status === 'finished' && !s.stopRequested ? c.train.epochs : s.epoch) : 0,
    samples: s?.committed?.samples ?? s?.ledger.samplesCommitted ?? 0,
    losses: lastReport?.losses ?? {},
    generations: s?.generation ?? 0,
    wallSeconds: (Date.now() - x.t0) / 1000,
    skipped: skippedSamples(c.job.runDir),
  };
  writeFileSync(x.summaryPath, JSON.stringify(summary, null, 2) + '\n');
  say('');
  say(`job ${c.job.id} ${summary.status} after ${fmtDuration(summary.wallSeconds)}`);
  say(`  final losses:      ${fmtLosses(summary.losses)}`);
  say(`  samples trained:   ${summary.samples} (${summary.samples - x.firstSamples} in this launch), ${summary.step} steps, ${summary.generations} generation(s)`);
  const skippedTotal = Object.values(summary.skipped).reduce((a, b) => a + b, 0);
  say(`  samples skipped:   ${skippedTotal ? `${skippedTotal} (${Object.entries(summary.skipped).map(([r, n]) => `${r} ${n}`).join(', ')}; every epoch counts again; see the trainer logs)` : 'none'}`);
  say(`  checkpoint:        ${summary.checkpointDir ?? 'none committed'}`);
  say(`  run dir:           ${c.job.runDir} (logs/, metrics-*.jsonl)`);
  if (summary.step > 0 || Object.keys(summary.losses).length) say(`  charts:            blip2 report ${c.job.runDir}`);
  if (summary.status === 'stopped' && s?.status === 'finished') say(`  the job has ended: start a new one from this checkpoint with model.checkpoint`);
  else if (summary.status === 'stopped') say(`  resume with the same command: the job continues from its last commit`);
  return summary;
}

/**
 * Samples skipped by every trainer of the run, by reason: the `skipped` counts of each `metrics-<node>.jsonl` line
 * are cumulative per process, so each file adds its increases (a count that falls is a restarted process).
 */
export function skippedSamples(runDir: string): Record<string, number> {
  const total: Record<string, number> = {};
  let files: string[] = [];
  try {
    files = readdirSync(runDir).filter((f) => /^metrics-.*\.jsonl$/.test(f));
  } catch {
    return total;
  }
  for (const f of files) {
    const last: Record<string, number> = {};
    for (const line of readFileSync(join(runDir, f), 'utf8').split('\n')) {
      if (!line.includes('"skipped"')) continue;
      let counts: Record<string, number> | undefined;
      try { counts = (JSON.parse(line) as { skipped?: Record<string, number> }).skipped; } catch { continue; }
      for (const [reason, n] of Object.entries(counts ?? {})) {
        const before = last[reason] ?? 0;
        total[reason] = (total[reason] ?? 0) + (n >= before ? n - before : n);
        last[reason] = n;
      }
    }
  }
  return total;
}
