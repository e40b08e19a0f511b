/**
 * The trainer process: `tsx trainer/main.ts [--config job.yaml] [--key value ...]` (`--help` lists the keys).
 *
 *  1. Load the job config (file < env BLIP2_* < flags), pick the tensor engine, build the model, AdamW and metrics.
 *  2. Start the gRPC collective server, connect to NATS and join the job with the job token.
 *  3. For every assignment (generation): connect the collective ring, restore the commit or receive rank 0's
 *     parameters, train (trainer/loop.ts), checkpoint and commit with the coordinator, ack shards after commits.
 *     JobMember heartbeats, and the shard leases are renewed, from worker threads: a long synchronous step neither
 *     makes the coordinator declare a busy trainer lost nor lets the queue hand a held shard to another trainer.
 *  4. A collective failure is reported to the coordinator; a generation change aborts the step (pending collectives
 *     fail as the ring re-connects); either way the trainer waits for its next assignment and restores the commit.
 *  5. Exit 0 when the job finishes; 2 on bad input (config, token); 1 on any other failure.
 * With `eval.tasks`, rank 0 evaluates the held-out split on committed checkpoints (trainer/evaluate.ts) every
 * `eval.intervalSteps` and at the end, and exports the figures (`blip2_eval_value{task,metric}`, the JSONL).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Registry } from 'prom-client';
import {
  connectJobNats, createLogger, createRegistry, EXIT_SIGNALLED, loadProcessConfig, ProcessHealth, runProcess, serveMetrics, UsageError,
  type JobConfig, type Logger,
} from '../common';
import {
  AuthError, GenerationChangedError, JobFinishedError, JobMember, ProtocolError, type Assignment,
} from '../coordinator/client';
import { loadDataIndex, shardQueueOptions, splitDatasets } from '../dataloader';
import { CheckpointError } from './checkpoint';
import { CollectiveError, createCollectiveGroup, type CollectiveGroup } from './collective';
import { createTrainerCore, type BuiltTrainerCore } from './core';
import { evalFigures, evaluateCheckpoint } from './evaluate';
import { JetStreamEpochData } from './epoch-data';
import { GenerationAbortedError, runGeneration, type CommitChannel, type LoopEvaluation } from './loop';
import { LeaseKeeper } from './lease-keeper';
import { createTrainerMetrics, type TrainerMetrics } from './metrics';
import { engineName, engineOptionsFromConfig, initEngine, tf } from './engine';
import type { EngineName, EngineOptions } from './engine';
import { collectiveAdapter } from './step';

const HELP = `Usage: tsx trainer/main.ts [--config FILE] [--<key> <value> ...]

Runs one trainer of a BLIP-2 training job (stage 1 or 2, train.stage): joins the job's coordinator over NATS with the job token,
trains its share of every synchronous step with its peers over gRPC collectives, checkpoints (rank 0) and commits,
and exits 0 when the job finishes (143 when SIGTERM/SIGINT stopped it first, 2 for bad input). Normally started by \`blip2 launch\`; the launcher passes --config and sets
BLIP2_NODE_ID, BLIP2_GRPC_PORT and BLIP2_METRICS_PORT per process.

Options:
  --config FILE      job configuration (YAML or JSON); every key can also come from BLIP2_<KEY> or --<key>
  --<key> <value>    any configuration key, e.g. --train.batchSizePerTrainer 8 (see \`blip2 config --keys\`)
  -h, --help         this text

Keys a trainer reads: job.{id,token,runDir}, node.id, model.{preset,config,checkpoint}, data.*, train.*, optim.*,
checkpoint.{dir,intervalSteps}, eval.*, nats.*, grpc.{host,advertiseHost,port,tls.*}, metrics.*, log.*, membership.heartbeatMs.
Tensor engine: BLIP2_ENGINE=tensorflow|wasm|cpu (default: the fastest that loads and can train).
`;

/** Engines that cannot differentiate an embedding lookup (wasm at tfjs 4.22 lacks UnsortedSegmentSum) fall back to cpu. */
async function trainingEngine(log: Logger, options: EngineOptions): Promise<EngineName> {
  const name = await initEngine(options);
  try {
    tf.tidy(() => tf.grad((x: tf.Tensor) => tf.sum(tf.gather(x, tf.tensor1d([0, 1, 1], 'int32'))))(tf.ones([3])).dataSync());
    return name;
  } catch (e) {
    await import('@tensorflow/tfjs-backend-cpu');
    await tf.setBackend('cpu');
    log.warn('tensor engine cannot train the model, using cpu', { engine: name, error: (e as Error).message });
    return 'cpu';
  }
}

/** What the generations of one trainer process share (built by steps 1 and 2). */
interface TrainerParts {
  config: JobConfig;
  log: Logger;
  registry: Registry;
  metrics: TrainerMetrics;
  core: BuiltTrainerCore;
  group: CollectiveGroup;
  nc: NatsConnection;
  member: JobMember;
  keeper: LeaseKeeper | undefined;
  queue: ReturnType<typeof shardQueueOptions>;
  /** `/healthz` (the loop beats every step) and `/readyz` (ready while holding a generation). */
  health: ProcessHealth;
  /** Aborted by SIGTERM / SIGINT. */
  stop: AbortController;
}

const ringOf = (a: Assignment) => ({
  generation: a.generation, rank: a.rank, worldSize: a.worldSize,
  peers: a.peers.map((p) => ({ rank: p.rank, ...hostPort(p.address) })),
});

/** Steps 3 and 4: every assignment in turn, until the job finishes or the trainer is stopped. */
class GenerationDriver {
  /** An assignment that arrived while the previous generation was still running, and its ring connection. */
  private early: { a: Assignment; connected: Promise<void> } | undefined;
  private afterGeneration = -1;
  private running = false;
  private reason: 'start' | 'failure' | 'generation_change' = 'start';

  constructor(private readonly t: TrainerParts) {}

  private get stopping(): boolean {
    return this.t.stop.signal.aborted;
  }

  /** Resolves when the job has finished or the trainer is stopping; throws what the trainer cannot go on from. */
  async runAll(): Promise<void> {
    for (;;) {
      const next = await this.nextAssignment();
      if (!next) return;
      if ((await this.runAssignment(next.a, next.connected)) === 'done') return;
    }
  }

  /** The next assignment (one that arrived early, or the next one the job state gives); undefined at the end. */
  private async nextAssignment(): Promise<{ a: Assignment; connected?: Promise<void> } | undefined> {
    this.t.health.setReady(false, `joined; waiting for a generation after ${this.afterGeneration}`);
    this.t.health.waiting('a generation (rendezvous)');
    let a: Assignment;
    let connected: Promise<void> | undefined;
    try {
      if (this.early && this.early.a.generation > this.afterGeneration) ({ a, connected } = this.early);
      else a = await this.t.member.waitForAssignment(this.afterGeneration, this.t.stop.signal);
      this.early = undefined;
    } catch (e) {
      if (e instanceof JobFinishedError) return undefined;
      if (this.stopping) return undefined;
      throw e;
    }
    return { a, connected };
  }

  /**
   * One generation: 3. connect the ring and train (trainer/loop.ts); 4. on a collective failure report it, on a
   * generation change go back to rendezvous ('again'); 'done' when the job finished or the trainer is stopping.
   */
  private async runAssignment(a: Assignment, connected: Promise<void> | undefined): Promise<'done' | 'again'> {
    const { config, log, registry, metrics, core, group, nc, member, keeper, queue, health, stop } = this.t;
    this.afterGeneration = a.generation;
    metrics.incRendezvous(this.reason);
    metrics.setMembership({ worldSize: a.worldSize, generation: a.generation, rank: a.rank });
    log.info('assignment', { generation: a.generation, rank: a.rank, worldSize: a.worldSize, epoch: a.epoch, restore: a.restore?.step ?? null });

    const abort = new AbortController();
    const onStop = () => abort.abort(new GenerationAbortedError('the trainer is stopping'));
    stop.signal.addEventListener('abort', onStop);
    // A generation change: stop between steps, and make a collective that is waiting on the old ring fail now
    // (re-connecting the ring for the next generation closes the old links).
    const off = member.onGenerationChange((generation) => {
      if (generation === a.generation || abort.signal.aborted) return;
      abort.abort(new GenerationAbortedError(`generation ${a.generation} -> ${generation}`));
      void member.waitForAssignment(a.generation, stop.signal).then((next) => {
        if (!this.running || this.early || next.generation <= a.generation) return;
        const c = group.connect(ringOf(next)); // fails whatever collective still waits on the old ring
        c.catch(() => undefined);
        this.early = { a: next, connected: c };
      }, () => undefined);
    });
    // The job ended while this generation trains (`blip2 stop` ends it at a commit): stop between steps, as for a
    // generation change; the next assignment then reports the end.
    member.waitFinished(abort.signal).then(() => abort.abort(new GenerationAbortedError('the job has ended')), () => undefined);
    const data = new JetStreamEpochData({
      nc, stream: queue.stream, durable: queue.durable, ackWaitMs: queue.ackWaitMs, keeper, dataRoot: config.data.root,
      tokenizer: core.tokenizer, batchSize: config.train.batchSizePerTrainer, workers: config.data.workers,
      transform: { mode: 'train', imageSize: core.config.vision_config.image_size, scale: [config.data.cropMinScale, 1], flipProbability: config.data.flipProbability },
      registry, logger: log,
    });
    // Waits on the coordinator are healthy however long they take; the loop beats again when they end.
    const waitingOn = <T>(what: string, p: () => Promise<T>): Promise<T> => {
      health.waiting(what);
      return p().finally(() => health.beat(`wait for ${what}`));
    };
    const commits: CommitChannel = {
      propose: (c) => member.proposeCommit(c),
      waitCommitted: (step) => waitingOn(`the commit of step ${step}`, () => member.waitCommitted(step, abort.signal)),
      epochDone: (epoch) => member.epochDone(epoch),
      waitForEpoch: (epoch) => waitingOn(`epoch ${epoch}`, () => member.waitForEpoch(epoch, abort.signal)),
      progress: (p) => member.reportProgress(p),
    };
    try {
      await (connected ?? group.connect(ringOf(a)));
      this.running = true;
      health.setReady(true, `generation ${a.generation}, rank ${a.rank} of ${a.worldSize}`);
      health.beat(`start of generation ${a.generation}`);
      let outcome;
      try {
        outcome = await runGeneration(core, {
          generation: a.generation, rank: a.rank, worldSize: a.worldSize, epoch: a.epoch, restore: a.restore,
          coll: collectiveAdapter(group), commits, data, signal: abort.signal,
        }, (s) => health.beat(`step ${s.step}`));
      } finally {
        this.running = false;
      }
      if (outcome.kind === 'maxSteps') {
        health.setReady(false, `train.maxSteps reached at step ${outcome.step}`);
        health.waiting('the job to finish');
        log.info('train.maxSteps reached; waiting for the job to finish', { step: outcome.step });
        await member.waitFinished(stop.signal).catch(() => undefined);
      }
      return 'done';
    } catch (e) {
      data.close();
      if (e instanceof JobFinishedError) return 'done';
      if (this.stopping) return 'done';
      if (e instanceof CollectiveError && !abort.signal.aborted && member.generation === a.generation) {
        log.warn('collective failed; reporting it', { op: e.op, failure: e.failure, missingRank: e.missingRank, error: e.message });
        await member.reportFailure(a.generation, {
          ...(e.missingRank >= 0 ? { missingRank: e.missingRank } : {}), op: e.op, message: e.message,
        }).catch((err: Error) => log.warn('could not report the failure', { error: err.message }));
        this.reason = 'failure';
        return 'again';
      }
      if (e instanceof CollectiveError || e instanceof GenerationChangedError || e instanceof GenerationAbortedError ||
        e instanceof ProtocolError || abort.signal.aborted) {
        log.info('generation ended; back to rendezvous', { generation: a.generation, error: (e as Error).message });
        this.reason = 'generation_change';
        return 'again';
      }
      if (e instanceof CheckpointError) throw new UsageError(`cannot restore the committed checkpoint: ${e.message}`);
      throw e;
    } finally {
      off();
      stop.signal.removeEventListener('abort', onStop);
      data.close();
    }
  }
}

/** Step 2: the collective's gRPC server (mutual TLS when configured); its address as peers reach it. */
async function startCollective(config: JobConfig, log: Logger): Promise<{ group: CollectiveGroup; address: string }> {
  const tls = config.grpc.tls.certFile
    ? { certFile: config.grpc.tls.certFile, keyFile: config.grpc.tls.keyFile, caFile: config.grpc.tls.caFile }
    : undefined;
  const group: CollectiveGroup = await createCollectiveGroup({
    jobId: config.job.id, token: config.job.token, listen: { host: config.grpc.host, port: config.grpc.port },
    ...(tls ? { tls: tlsOptions(tls) } : {}),
  });
  const address = `${config.grpc.advertiseHost}:${group.address.port}`;
  log.info('collective server listening', { address });
  return { group, address };
}

/** Step 2: joins the job with the job token (a refused token is bad input: exit 2). */
async function joinJob(config: JobConfig, nc: NatsConnection, nodeId: string, address: string): Promise<JobMember> {
  try {
    return await JobMember.join({ nc, jobId: config.job.id, token: config.job.token, nodeId, address, heartbeatMs: config.membership.heartbeatMs });
  } catch (e) {
    if (e instanceof AuthError) throw new UsageError(`job ${config.job.id} refused this trainer: ${e.message}`);
    throw e;
  }
}

runProcess('trainer', async () => {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return 0;
  }
  // 1. Config, engine, metrics, model.
  const { config } = loadProcessConfig(argv);
  const nodeId = config.node.id;
  const log = createLogger('trainer', { job: config.job.id, node: nodeId });
  if (!config.job.token) throw new UsageError('job.token is empty: set it in the config or BLIP2_JOB_TOKEN (`blip2 launch` generates one)');
  const engine = await trainingEngine(log, engineOptionsFromConfig(config.engine));
  log.info('engine', { engine, requested: engineName() });

  const registry = createRegistry({ labels: { job_id: config.job.id, node: nodeId } });
  const metrics = createTrainerMetrics({ registry, nodeId, runDir: config.job.runDir, engine });
  // Healthy unless a step (or the start of a generation) has not ended for 10 minutes while training: the
  // heartbeat worker's own limit for a main thread that stopped running.
  const health = new ProcessHealth({ stallMs: 10 * 60_000 });
  const server = config.metrics.enabled
    ? await serveMetrics(registry, { host: config.metrics.host, port: config.metrics.port, health: health.health, ready: health.ready })
    : undefined;
  if (server) log.info('metrics at http://' + server.address + '/metrics');

  const tokenizerPath = config.data.tokenizer || join(config.data.root, 'tokenizer.json');
  const evaluation = evaluationOf(config, tokenizerPath, metrics, health, log);
  const core = await createTrainerCore({
    preset: config.model.preset, modelConfigFile: config.model.config || undefined, weights: config.model.checkpoint || undefined,
    stage: config.train.stage === 2 ? 2 : 1, lmTokenizerPath: config.data.lmTokenizer, languageModel: config.model.languageModel || undefined,
    tokenizerPath, seed: config.train.seed, epochs: config.train.epochs,
    optim: config.optim, checkpointEvery: config.checkpoint.intervalSteps, maxSteps: config.train.maxSteps,
    checkpointRoot: config.checkpoint.dir, keepCheckpoints: config.checkpoint.keep, ledgerPath: join(config.job.runDir, 'ledger.jsonl'), metrics, log,
    evaluation,
  });

  // 2. The collective server, NATS, the job.
  const { group, address } = await startCollective(config, log);
  const nc = await connectJobNats(config);
  health.setReady(false, 'joining the job');
  const member = await joinJob(config, nc, nodeId, address);
  log.info('joined', { generation: member.generation });

  const stop = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      log.info('stopping', { signal: sig });
      health.setReady(false, `stopping (${sig})`);
      stop.abort(sig);
    });
  }

  const queue = shardQueueOptions(config, nc);
  const keeper = await LeaseKeeper.start(nc, { periodMs: Math.max(50, Math.floor(queue.ackWaitMs / 3)), name: `blip2-${nodeId}-leases` });
  // 3.–4. The generations; 5. the exit status.
  let code = 0;
  try {
    await new GenerationDriver({ config, log, registry, metrics, core, group, nc, member, keeper, queue, health, stop }).runAll();
    log.info(stop.signal.aborted ? 'stopped' : 'job finished');
    if (stop.signal.aborted) code = EXIT_SIGNALLED; // stopped before the job ended: a supervisor starts it again
    health.setReady(false, stop.signal.aborted ? 'stopped' : 'the job has finished');
    health.waiting('the process to exit');
  } catch (e) {
    code = e instanceof UsageError ? 2 : 1;
    throw e;
  } finally {
    if (stop.signal.aborted) await member.leave().catch(() => undefined);
    else member.close();
    await keeper?.stop().catch(() => undefined);
    await group.close().catch(() => undefined);
    await nc.drain().catch(() => undefined);
    await server?.close();
    core.dispose();
  }
  return code;
});

/**
 * The in-job evaluation (`eval.*`), or undefined without `eval.tasks`. The held-out split must exist before anything
 * starts. Rank 0 runs it on the checkpoint it just wrote; a failed evaluation is logged and training goes on.
 */
function evaluationOf(config: JobConfig, tokenizerPath: string, metrics: TrainerMetrics, health: ProcessHealth, log: Logger): LoopEvaluation | undefined {
  const e = config.eval;
  if (e.tasks.length === 0) return undefined;
  const { index } = loadDataIndex(config.data.root);
  if (splitDatasets(index, e.split).length === 0) {
    throw new UsageError(`eval.split "${e.split}": the index of ${config.data.root} has no dataset of that split (it has: ${[...new Set(index.datasets.map((d) => d.split ?? d.name))].join(', ')})`);
  }
  return {
    intervalSteps: e.intervalSteps, atEnd: e.atEnd, epochs: config.train.epochs,
    async run({ checkpointDir, step, epoch }) {
      health.waiting(`the evaluation of step ${step}`);
      try {
        const report = await evaluateCheckpoint({
          checkpoint: checkpointDir, data: config.data.root, split: e.split, tasks: e.tasks, limit: e.limit || undefined,
          settings: {
            checkpoint: checkpointDir, preset: config.model.preset, modelConfigFile: config.model.config, tokenizer: tokenizerPath,
            lmTokenizer: config.data.lmTokenizer, languageModel: config.model.languageModel || config.model.checkpoint,
          },
        });
        const figures = evalFigures(report);
        metrics.observeEval({ step, epoch, split: e.split, checkpointDir, seconds: report.seconds, figures });
        log.info('evaluation', { step, split: e.split, seconds: Number(report.seconds.toFixed(1)), ...Object.fromEntries(figures.map((f) => [`${f.task}.${f.metric}`, Number(f.value.toFixed(4))])) });
      } catch (err) {
        log.error('evaluation failed; training goes on', { step, error: (err as Error).message });
      } finally {
        health.beat(`the evaluation of step ${step}`);
      }
    },
  };
}

function hostPort(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(':');
  const port = Number(address.slice(at + 1));
  if (at <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) throw new UsageError(`peer address "${address}" is not host:port`);
  return { host: address.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port };
}

function tlsOptions(t: { certFile: string; keyFile: string; caFile: string }) {
  const read = (key: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (e) {
      throw new UsageError(`grpc.tls.${key} ${path}: ${(e as Error).message}`);
    }
  };
  return { certPem: read('certFile', t.certFile), keyPem: read('keyFile', t.keyFile), caPem: read('caFile', t.caFile) };
}
