/**
 * The trainer's metrics, registered on a registry the process passes in (its `/metrics` server serves that
 * registry), named `blip2_trainer_<what>_<unit>`. Every step's scalars also go to one JSON line in
 * `<runDir>/metrics-<nodeId>.jsonl`, so that a run can be plotted without Prometheus. The in-job evaluation's
 * figures are gauges `blip2_eval_value{task,metric}` (with `blip2_eval_baseline{task,metric}`, the chance level or
 * baseline beside each) and one JSONL line `{"kind": "eval", …}` per evaluation.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { dataSkipCounts } from '../dataloader';

export const STEP_PHASES = ['data', 'forward_backward', 'communication', 'optimizer'] as const;
export type StepPhase = (typeof STEP_PHASES)[number];

/** What one training step reports. */
export interface StepRecord {
  step: number;
  epoch: number;
  generation: number;
  rank: number;
  worldSize: number;
  /** Losses of the global batch (already reduced across ranks), by objective: itc, itm, itg (stage 1) or lm (stage 2). */
  losses: Record<string, number>;
  /** Samples this rank trained on in the step. */
  samples: number;
  /** Samples of the whole global batch. */
  globalSamples: number;
  learningRate: number;
  gradNorm: number;
  /** Seconds per phase of this step on this rank. */
  phaseSeconds: Record<StepPhase, number>;
  /** Bytes this rank sent in the step's gradient all-reduce, and the seconds it took. */
  allReduceBytes: number;
  allReduceSeconds: number;
}

/** One evaluation of a committed checkpoint (trainer/evaluate.ts `evalFigures` flattens a report into `figures`). */
export interface EvalRecord {
  step: number;
  epoch: number;
  split: string;
  checkpointDir: string;
  seconds: number;
  /** One row per (task, metric): the value and the chance level or baseline beside it (same units). */
  figures: Array<{ task: string; metric: string; value: number; baseline: number }>;
}

export interface TrainerMetricsOptions {
  /** Registry to register on (required: the process owns it). */
  registry: Registry;
  /** This trainer's node id (JSONL file name). */
  nodeId: string;
  /** Where the JSONL goes; undefined = no JSONL. */
  runDir?: string;
  /** Tensor engine in use, exported as a label of `blip2_trainer_info`. Default `unknown`. */
  engine?: string;
}

export interface TrainerMetrics {
  /** Records one step (Prometheus + one JSONL line). */
  observeStep(r: StepRecord): void;
  /** Membership after a rendezvous. */
  setMembership(m: { worldSize: number; generation: number; rank: number }): void;
  /** Shard descriptors held and not yet acked, and acks done. */
  setShardsPending(n: number): void;
  addShardsAcked(n: number): void;
  /** A checkpoint written (rank 0) or restored, with its duration. */
  observeCheckpoint(kind: 'write' | 'restore', seconds: number): void;
  /** An in-job evaluation (rank 0): gauges and one JSONL line. */
  observeEval(r: EvalRecord): void;
  /** A collective failure that sent this trainer back to rendezvous. */
  incRendezvous(reason: 'start' | 'failure' | 'generation_change'): void;
  /** Path of the JSONL file, if any. */
  readonly jsonlPath: string | undefined;
}

export function createTrainerMetrics(o: TrainerMetricsOptions): TrainerMetrics {
  const registers = [o.registry];
  const loss = new Gauge({ name: 'blip2_trainer_loss', help: 'Loss of the last step per objective of the stage (global batch): itc, itm, itg in stage 1, lm in stage 2.', labelNames: ['objective'], registers });
  const steps = new Counter({ name: 'blip2_trainer_steps_total', help: 'Optimiser steps completed by this trainer.', registers });
  const samples = new Counter({ name: 'blip2_trainer_samples_total', help: 'Samples this trainer trained on.', registers });
  const globalSamples = new Counter({ name: 'blip2_trainer_global_samples_total', help: 'Samples of the global batches this trainer took part in.', registers });
  const phase = new Histogram({
    name: 'blip2_trainer_step_phase_seconds', help: 'Time per step in each phase (data, forward_backward, communication, optimizer).',
    labelNames: ['phase'], buckets: [0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers,
  });
  const stepSeconds = new Histogram({
    name: 'blip2_trainer_step_seconds', help: 'Wall time of a whole training step.',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120], registers,
  });
  const arBytes = new Counter({ name: 'blip2_trainer_allreduce_bytes_total', help: 'Gradient bytes all-reduced by this trainer.', registers });
  const arSeconds = new Counter({ name: 'blip2_trainer_allreduce_seconds_total', help: 'Seconds spent in gradient all-reduce.', registers });
  const busBw = new Gauge({
    name: 'blip2_trainer_allreduce_bus_bandwidth_bytes_per_second',
    help: 'Bus bandwidth of the last gradient all-reduce, bytes/s × 2(N−1)/N (NCCL definition).', registers,
  });
  const lr = new Gauge({ name: 'blip2_trainer_learning_rate', help: 'Learning rate of the last step.', registers });
  const gradNorm = new Gauge({ name: 'blip2_trainer_grad_norm', help: 'Global gradient L2 norm of the last step (before clipping).', registers });
  const samplesPerSec = new Gauge({ name: 'blip2_trainer_samples_per_second', help: 'Global samples per second of the last step.', registers });
  const stepGauge = new Gauge({ name: 'blip2_trainer_step', help: 'Global step of the last completed step.', registers });
  const epochGauge = new Gauge({ name: 'blip2_trainer_epoch', help: 'Epoch being trained.', registers });
  const worldSize = new Gauge({ name: 'blip2_trainer_world_size', help: 'Number of trainers in the current generation.', registers });
  const generation = new Gauge({ name: 'blip2_trainer_generation', help: 'Membership generation this trainer is in.', registers });
  const rank = new Gauge({ name: 'blip2_trainer_rank', help: 'Rank of this trainer in the current generation.', registers });
  const pending = new Gauge({ name: 'blip2_trainer_shards_pending', help: 'Shard descriptors held by this trainer and not yet acked.', registers });
  const acked = new Counter({ name: 'blip2_trainer_shards_acked_total', help: 'Shard descriptors acked after a committed checkpoint.', registers });
  const ckpt = new Histogram({
    name: 'blip2_trainer_checkpoint_seconds', help: 'Time to write or restore a checkpoint.', labelNames: ['kind'],
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300], registers,
  });
  const rendezvous = new Counter({ name: 'blip2_trainer_rendezvous_total', help: 'Rendezvous this trainer went through, by reason.', labelNames: ['reason'], registers });
  const info = new Gauge({ name: 'blip2_trainer_info', help: 'Constant 1, labelled with the node id and tensor engine.', labelNames: ['node', 'engine'], registers });
  info.set({ node: o.nodeId, engine: o.engine ?? 'unknown' }, 1);
  // The evaluation's gauges are registered at the first evaluation: a job without one shows none of them.
  let evalGauges: ReturnType<typeof createEvalGauges> | undefined;
  const createEvalGauges = () => ({
    value: new Gauge({
      name: 'blip2_eval_value', help: 'Last in-job evaluation of the held-out split, by task and metric (retrieval recall and VQA accuracy in percent, BLEU in [0, 1], CIDEr-D).',
      labelNames: ['task', 'metric'], registers,
    }),
    baseline: new Gauge({
      name: 'blip2_eval_baseline', help: 'Chance level (retrieval) or trivial baseline (most common training caption or answer) beside each blip2_eval_value.',
      labelNames: ['task', 'metric'], registers,
    }),
    step: new Gauge({ name: 'blip2_eval_step', help: 'Step of the checkpoint the last in-job evaluation scored.', registers }),
    seconds: new Gauge({ name: 'blip2_eval_seconds', help: 'Wall time of the last in-job evaluation.', registers }),
  });
  for (const reason of ['start', 'failure', 'generation_change'] as const) rendezvous.inc({ reason }, 0);
  // No loss series before the first step (a NaN there would read as a diverged run).

  let jsonlPath: string | undefined;
  if (o.runDir) {
    mkdirSync(o.runDir, { recursive: true });
    jsonlPath = join(o.runDir, `metrics-${o.nodeId}.jsonl`);
  }

  return {
    jsonlPath,
    observeStep(r) {
      for (const [objective, v] of Object.entries(r.losses)) loss.set({ objective }, v);
      steps.inc();
      samples.inc(r.samples);
      globalSamples.inc(r.globalSamples);
      let total = 0;
      for (const p of STEP_PHASES) {
        phase.observe({ phase: p }, r.phaseSeconds[p]);
        total += r.phaseSeconds[p];
      }
      stepSeconds.observe(total);
      arBytes.inc(r.allReduceBytes);
      arSeconds.inc(r.allReduceSeconds);
      if (r.allReduceSeconds > 0 && r.worldSize > 1) {
        // allReduceBytes is the tensor size; bus bandwidth = algbw · 2(N−1)/N.
        busBw.set((r.allReduceBytes / r.allReduceSeconds) * ((2 * (r.worldSize - 1)) / r.worldSize));
      }
      lr.set(r.learningRate);
      gradNorm.set(r.gradNorm);
      const sps = total > 0 ? r.globalSamples / total : 0;
      samplesPerSec.set(sps);
      stepGauge.set(r.step);
      epochGauge.set(r.epoch);
      worldSize.set(r.worldSize);
      generation.set(r.generation);
      rank.set(r.rank);
      if (jsonlPath) {
        const line = {
          time: new Date().toISOString(), step: r.step, epoch: r.epoch, generation: r.generation, rank: r.rank,
          worldSize: r.worldSize, loss: Object.values(r.losses).reduce((a, b) => a + b, 0), losses: r.losses, samples: r.samples,
          globalSamples: r.globalSamples, samplesPerSec: sps, learningRate: r.learningRate, gradNorm: r.gradNorm,
          stepSeconds: total, phaseSeconds: r.phaseSeconds, allReduceBytes: r.allReduceBytes, allReduceSeconds: r.allReduceSeconds,
          // Samples this process skipped so far (bad images, captions, truncated tars), by reason.
          skipped: dataSkipCounts(o.registry),
        };
        appendFileSync(jsonlPath, JSON.stringify(line) + '\n');
      }
    },
    setMembership(m) {
      worldSize.set(m.worldSize);
      generation.set(m.generation);
      rank.set(m.rank);
    },
    setShardsPending: (n) => pending.set(n),
    addShardsAcked: (n) => acked.inc(n),
    observeCheckpoint: (kind, seconds) => ckpt.observe({ kind }, seconds),
    incRendezvous: (reason) => rendezvous.inc({ reason }),
    observeEval(r) {
      evalGauges ??= createEvalGauges();
      for (const f of r.figures) {
        evalGauges.value.set({ task: f.task, metric: f.metric }, f.value);
        evalGauges.baseline.set({ task: f.task, metric: f.metric }, f.baseline);
      }
      evalGauges.step.set(r.step);
      evalGauges.seconds.set(r.seconds);
      if (jsonlPath) {
        const figures: Record<string, Record<string, { value: number; baseline: number }>> = {};
        for (const f of r.figures) (figures[f.task] ??= {})[f.metric] = { value: f.value, baseline: f.baseline };
        const line = { time: new Date().toISOString(), kind: 'eval', step: r.step, epoch: r.epoch, split: r.split, checkpointDir: r.checkpointDir, seconds: r.seconds, eval: figures };
        appendFileSync(jsonlPath, JSON.stringify(line) + '\n');
      }
    },
  };
}
