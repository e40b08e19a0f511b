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
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createLogger, createRegistry, serveMetrics, UsageError, type Logger } from '../common';
import {
  AuthError, GenerationChangedError, JobFinishedError, JobMember, ProtocolError, type Assignment,
} from '../coordinator';
import { shardQueueOptions } from '../coordinator/epochs';
import { connectJobNats } from '../coordinator/nats';
import { loadProcessConfig, runProcess } from '../coordinator/process';
import { CheckpointError } from './checkpoint';
import { CollectiveError, createCollectiveGroup, type CollectiveGroup } from './collective';
import { createTrainerCore } from './core';
import { JetStreamEpochData } from './epoch-data';
import { GenerationAbortedError, runGeneration, type CommitChannel } from './loop';
import { LeaseKeeper } from './lease-keeper';
import { createTrainerMetrics } from './metrics';
import { engineName, engineOptionsFromConfig, initEngine, tf } from './engine';
import type { EngineName, EngineOptions } from './engine';
import { collectiveAdapter } from './step';

const HELP = `Usage: tsx trainer/main.ts [--config FILE] [--<key> <value> ...]

Runs one trainer of a BLIP-2 stage-1 training job: joins the job's coordinator over NATS with the job token,
trains its share of every synchronous step with its peers over gRPC collectives, checkpoints (rank 0) and commits,
and exits 0 when the job finishes. Normally started by \`blip2 launch\`; the launcher passes --config and sets
BLIP2_NODE_ID, BLIP2_GRPC_PORT and BLIP2_METRICS_PORT per process.

Options:
  --config FILE      job configuration (YAML or JSON); every key can also come from BLIP2_<KEY> or --<key>
  --<key> <value>    any configuration key, e.g. --train.batchSizePerTrainer 8 (see \`blip2 config --keys\`)
  -h, --help         this text

Keys a trainer reads: job.{id,token,runDir}, node.id, model.{preset,config,checkpoint}, data.*, train.*, optim.*,
checkpoint.{dir,intervalSteps}, nats.*, grpc.{host,advertiseHost,port,tls.*}, metrics.*, log.*, membership.heartbeatMs.
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

runProcess('trainer', async () => {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return 0;
  }
  const { config } = loadProcessConfig(argv);
  const nodeId = config.node.id;
  const log = createLogger('trainer', { job: config.job.id, node: nodeId });
  if (!config.job.token) throw new UsageError('job.token is empty: set it in the config or BLIP2_JOB_TOKEN (`blip2 launch` generates one)');
  if (config.train.stage !== 1) throw new UsageError(`train.stage = ${config.train.stage}: this trainer implements stage 1 (stage 2 is not supported yet)`);
  const engine = await trainingEngine(log, engineOptionsFromConfig(config.engine));
  log.info('engine', { engine, requested: engineName() });

  const registry = createRegistry({ labels: { job_id: config.job.id, node: nodeId } });
  const metrics = createTrainerMetrics({ registry, nodeId, runDir: config.job.runDir, engine });
  const server = config.metrics.enabled ? await serveMetrics(registry, { host: config.metrics.host, port: config.metrics.port }) : undefined;
  if (server) log.info('metrics at http://' + server.address + '/metrics');

  const tokenizerPath = config.data.tokenizer || join(config.data.root, 'tokenizer.json');
  const core = await createTrainerCore({
    preset: config.model.preset, modelConfigFile: config.model.config || undefined, weights: config.model.checkpoint || undefined,
    tokenizerPath, seed: config.train.seed, epochs: config.train.epochs,
    optim: config.optim, checkpointEvery: config.checkpoint.intervalSteps, maxSteps: config.train.maxSteps,
    checkpointRoot: config.checkpoint.dir, keepCheckpoints: config.checkpoint.keep, ledgerPath: join(config.job.runDir, 'ledger.jsonl'), metrics, log,
  });

  const tls = config.grpc.tls.certFile
    ? { certFile: config.grpc.tls.certFile, keyFile: config.grpc.tls.keyFile, caFile: config.grpc.tls.caFile }
    : undefined;
  const group: CollectiveGroup = await createCollectiveGroup({
    jobId: config.job.id, token: config.job.token, listen: { host: config.grpc.host, port: config.grpc.port },
    ...(tls ? { tls: tlsOptions(tls) } : {}),
  });
  const address = `${config.grpc.advertiseHost}:${group.address.port}`;
  log.info('collective server listening', { address });

  const nc = await connectJobNats(config);
  let member: JobMember;
  try {
    member = await JobMember.join({ nc, jobId: config.job.id, token: config.job.token, nodeId, address, heartbeatMs: config.membership.heartbeatMs });
  } catch (e) {
    if (e instanceof AuthError) throw new UsageError(`job ${config.job.id} refused this trainer: ${e.message}`);
    throw e;
  }
  log.info('joined', { generation: member.generation });

  let stopping = false;
  const stopController = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      stopping = true;
      log.info('stopping', { signal: sig });
      stopController.abort(sig);
    });
  }

  const queue = shardQueueOptions(config, nc);
  const keeper = await LeaseKeeper.start(nc, { periodMs: Math.max(50, Math.floor(queue.ackWaitMs / 3)), name: `blip2-${nodeId}-leases` });
  const ringOf = (a: Assignment) => ({
    generation: a.generation, rank: a.rank, worldSize: a.worldSize,
    peers: a.peers.map((p) => ({ rank: p.rank, ...hostPort(p.address) })),
  });
  /** An assignment that arrived while the previous generation was still running, and its ring connection. */
  let early: { a: Assignment; connected: Promise<void> } | undefined;
  let afterGeneration = -1;
  let running = false;
  let code = 0;
  let reason: 'start' | 'failure' | 'generation_change' = 'start';
  try {
    for (;;) {
      let a: Assignment;
      let connected: Promise<void> | undefined;
      try {
        if (early && early.a.generation > afterGeneration) ({ a, connected } = early);
        else a = await member.waitForAssignment(afterGeneration, stopController.signal);
        early = undefined;
      } catch (e) {
        if (e instanceof JobFinishedError) break;
        if (stopping) break;
        throw e;
      }
      afterGeneration = a.generation;
      metrics.incRendezvous(reason);
      metrics.setMembership({ worldSize: a.worldSize, generation: a.generation, rank: a.rank });
      log.info('assignment', { generation: a.generation, rank: a.rank, worldSize: a.worldSize, epoch: a.epoch, restore: a.restore?.step ?? null });

      const abort = new AbortController();
      const onStop = () => abort.abort(new GenerationAbortedError('the trainer is stopping'));
      stopController.signal.addEventListener('abort', onStop);
      // A generation change: stop between steps, and make a collective that is waiting on the old ring fail now
      // (re-connecting the ring for the next generation closes the old links).
      const off = member.onGenerationChange((generation) => {
        if (generation === a.generation || abort.signal.aborted) return;
        abort.abort(new GenerationAbortedError(`generation ${a.generation} -> ${generation}`));
        void member.waitForAssignment(a.generation, stopController.signal).then((next) => {
          if (!running || early || next.generation <= a.generation) return;
          const c = group.connect(ringOf(next)); // fails whatever collective still waits on the old ring
          c.catch(() => undefined);
          early = { a: next, connected: c };
        }, () => undefined);
      });
      const data = new JetStreamEpochData({
        nc, stream: queue.stream, durable: queue.durable, ackWaitMs: queue.ackWaitMs, keeper, dataRoot: config.data.root,
        tokenizer: core.tokenizer, batchSize: config.train.batchSizePerTrainer, workers: config.data.workers,
        transform: { mode: 'train', imageSize: core.config.vision.image_size }, registry, logger: log,
      });
      const commits: CommitChannel = {
        propose: (c) => member.proposeCommit(c),
        waitCommitted: (step) => member.waitCommitted(step, abort.signal),
        epochDone: (epoch) => member.epochDone(epoch),
        waitForEpoch: (epoch) => member.waitForEpoch(epoch, abort.signal),
        progress: (p) => member.reportProgress(p),
      };
      try {
        await (connected ?? group.connect(ringOf(a)));
        running = true;
        let outcome;
        try {
          outcome = await runGeneration(core, {
            generation: a.generation, rank: a.rank, worldSize: a.worldSize, epoch: a.epoch, restore: a.restore,
            coll: collectiveAdapter(group), commits, data, signal: abort.signal,
          });
        } finally {
          running = false;
        }
        if (outcome.kind === 'maxSteps') {
          log.info('train.maxSteps reached; waiting for the job to finish', { step: outcome.step });
          await member.waitFinished(stopController.signal).catch(() => undefined);
        }
        break;
      } catch (e) {
        data.close();
        if (e instanceof JobFinishedError) break;
        if (stopping) break;
        if (e instanceof CollectiveError && !abort.signal.aborted && member.generation === a.generation) {
          log.warn('collective failed; reporting it', { op: e.op, failure: e.failure, missingRank: e.missingRank, error: e.message });
          await member.reportFailure(a.generation, {
            ...(e.missingRank >= 0 ? { missingRank: e.missingRank } : {}), op: e.op, message: e.message,
          }).catch((err: Error) => log.warn('could not report the failure', { error: err.message }));
          reason = 'failure';
          continue;
        }
        if (e instanceof CollectiveError || e instanceof GenerationChangedError || e instanceof GenerationAbortedError ||
          e instanceof ProtocolError || abort.signal.aborted) {
          log.info('generation ended; back to rendezvous', { generation: a.generation, error: (e as Error).message });
          reason = 'generation_change';
          continue;
        }
        if (e instanceof CheckpointError) throw new UsageError(`cannot restore the committed checkpoint: ${e.message}`);
        throw e;
      } finally {
        off();
        stopController.signal.removeEventListener('abort', onStop);
        data.close();
      }
    }
    log.info(stopping ? 'stopped' : 'job finished');
  } catch (e) {
    code = e instanceof UsageError ? 2 : 1;
    throw e;
  } finally {
    if (stopping) await member.leave().catch(() => undefined);
    else member.close();
    await keeper?.stop().catch(() => undefined);
    await group.close().catch(() => undefined);
    await nc.drain().catch(() => undefined);
    await server?.close();
    core.dispose();
  }
  return code;
});

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
