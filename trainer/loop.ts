/**
 * The training loop of one trainer for one membership generation, independent of how the generation was formed
 * (trainer/main.ts joins the job through NATS; tests drive it with in-process groups). Protocol per generation:
 *
 *  1. State: restore the assignment's commit (every rank reads the checkpoint rank 0 wrote), or start fresh: rank 0's
 *     initial parameters are broadcast to every rank, the optimiser starts empty.
 *  2. Per epoch, each rank pulls shard leases and builds batches (`EpochData`); every step is one synchronous
 *     step of the stage's model (`StageModel.step`: stage 1's `distributedStage1Step` or stage 2's
 *     `distributedStage2Step`; a rank out of data takes part with an empty batch), then the same AdamW update on
 *     every rank (the all-reduced gradient is bit-identical everywhere, so parameters stay identical).
 *  3. Every `checkpointEvery` steps, at `maxSteps` and at the end of an epoch, a commit: ranks all-gather their shard
 *     cursors, finished shards and trained sample ids; rank 0 writes the checkpoint (with `ledger.json`: the sample
 *     ids of every epoch in the committed model, cumulative along the chain of parents) and proposes the commit;
 *     all wait until it is recorded, then ack the shards it contains (exactly-once: a shard is acked only when a
 *     committed checkpoint contains all of its samples).
 *  4. The epoch ends when a step finds every rank without data and rank 0 sees the shard queue empty with no lease
 *     held outside this generation (a lease of a lost trainer comes back after the queue's ack wait).
 *  5. Rank 0 reports the epoch done; all wait for the next epoch (the coordinator publishes it) or the job's end.
 * In-job evaluation (`LoopOptions.evaluation`): at every `intervalSteps`-th step a commit is made, and rank 0
 * evaluates that checkpoint after writing it and before proposing it; at the end (the commit at `maxSteps`, or the
 * last epoch's last commit) the same. The other ranks meanwhile wait for the commit to be recorded (a wait on the
 * coordinator, not a collective, so no collective timeout runs while rank 0 evaluates).
 * A collective failure or a generation change aborts the generation: leases are handed back, the caller reports it
 * and waits for the next assignment.
 */
import { appendFileSync } from 'node:fs';
import { basename } from 'node:path';
import { Blip2Error, createLogger, type Logger } from '../common';
import type { Batch, LeasedShard, ShardDescriptor, ShardLease } from '../dataloader';
import { pruneCheckpoints, readCheckpoint, writeCheckpoint } from './checkpoint';
import type { TrainerMetrics } from './metrics';
import type { AdamW } from './optim';
import type { CommitInfo } from '../coordinator/client';
import { EMPTY_STAGE_BATCH, type StageBatch, type StageModel } from './stage-model';
import type { StepCollective } from './step';

/** The committed state a generation restores: the coordinator's CommitInfo. */
export type CommitRecord = CommitInfo;

/** The generation changed under a running step: abort, hand leases back, wait for the next assignment. */
export class GenerationAbortedError extends Blip2Error {}

/** Collective group of the generation: the step's operations plus broadcast. */
export interface LoopCollective extends StepCollective {
  broadcast(data: Float32Array, root: number): Promise<void>;
}

/** How commits are agreed (the coordinator through JobMember, or in memory in tests). */
export interface CommitChannel {
  /** Rank 0, after the checkpoint is on disk. */
  propose(c: CommitRecord & { generation: number }): Promise<void>;
  /** Every rank: resolves once a commit at `step` or later is recorded. */
  waitCommitted(step: number): Promise<CommitRecord>;
  /** Rank 0: every rank saw the end of `epoch` and its last commit is recorded. */
  epochDone(epoch: number): Promise<void>;
  /** Resolves with the epoch to train next (≥ `epoch`); rejects when the job has finished. */
  waitForEpoch(epoch: number): Promise<number>;
  /** Rank 0: progress for the launcher's display (best effort). */
  progress?(p: { step: number; epoch: number; losses: Record<string, number>; samples: number; samplesPerSec: number }): void;
}

/** A lease the loop can settle: the dataloader's LeasedShard, or a local one. */
export type TrainLease = ShardLease & Pick<LeasedShard, 'ack' | 'nak'>;

/** This rank's data for one generation. */
export interface EpochData<L extends TrainLease = TrainLease> {
  /**
   * Batches of this rank for `epoch` until its source runs dry; `cursorFor` gives the committed position inside a
   * partly consumed shard, `skip` says a descriptor is already committed (ack it, do not train it).
   */
  open(epoch: number, o: { cursorFor: (d: ShardDescriptor) => number | undefined; skip: (d: ShardDescriptor) => boolean }): AsyncIterator<Batch<L>> & { close(): Promise<void> };
  /** Queue counts for the epoch-end decision (rank 0): published-and-undelivered, and delivered-but-unacked. */
  queueState(): Promise<{ pending: number; ackPending: number }>;
  /** Leases this rank holds (not acked or nacked). */
  heldLeases(): number;
  /** Hands every held lease back (abort) and stops pulling. */
  close(): void;
}

/** The frozen ViT: pixels [B, 3, S, S] -> pre-ln_vision hidden states [B, P, Dv]. */
export interface VisionEncoder {
  encode(pixelValues: Float32Array, batch: number): Float32Array;
}

export interface LoopOptions {
  /** Commit every this many steps (and at maxSteps and epoch ends). */
  checkpointEvery: number;
  /** Stop after this many steps (0 = no limit). */
  maxSteps: number;
  /** Seed of the hard-negative draws (and of fresh parameters, via `initialValues`). */
  seed: number;
  /**
   * Seed the frozen backbones were generated from when no weights file gave them (recorded in each checkpoint, so
   * that a later job starting from it generates the same ViT and LM). Default: `seed`.
   */
  frozenSeed?: number;
  checkpointRoot: string;
  configHash: string;
  /** Learning rate of step `stepInEpoch` of `epoch`. */
  learningRate(epoch: number, stepInEpoch: number): number;
  /** `<runDir>/ledger.jsonl`, appended by rank 0 after each commit; undefined = none. */
  ledgerPath?: string;
  /** Wait between two looks at the queue when the epoch cannot end yet. Default 500 ms. */
  drainPollMs?: number;
  /** Checkpoints rank 0 keeps on disk (the last commit and the newest older ones); 0 or undefined = all. */
  keepCheckpoints?: number;
  /** In-job evaluation of committed checkpoints by rank 0; undefined = none. */
  evaluation?: LoopEvaluation;
}

/** When and how rank 0 evaluates a committed checkpoint. */
export interface LoopEvaluation {
  /** Every this many steps (a commit is made at those steps); 0 = none between. */
  intervalSteps: number;
  /** The job's last commit: at `maxSteps`, or the last commit of epoch `epochs - 1`. */
  atEnd: boolean;
  /** train.epochs (epochs are numbered from 0). */
  epochs: number;
  /** Evaluates the checkpoint just written (rank 0, before the commit is proposed); must not throw. */
  run(c: { checkpointDir: string; step: number; epoch: number }): Promise<void>;
}

/** Everything that outlives a generation inside one trainer process. */
export interface TrainerCore {
  /** The stage being trained: its trainable parameters and its distributed step. */
  model: StageModel;
  vision: VisionEncoder;
  optimizer: AdamW;
  /** Fresh parameters (used by rank 0 of a fresh start; others receive them by broadcast). */
  initialValues(): Map<string, Float32Array>;
  metrics?: TrainerMetrics;
  options: LoopOptions;
  log?: Logger;
}

export interface GenerationInput<L extends TrainLease = TrainLease> {
  generation: number;
  rank: number;
  worldSize: number;
  /** Epoch the coordinator says to train. */
  epoch: number;
  restore: CommitRecord | null;
  coll: LoopCollective;
  commits: CommitChannel;
  data: EpochData<L>;
  /** Aborted when the generation changes. */
  signal?: AbortSignal;
}

/** Per-step summary the loop reports (tests read it; main logs it). */
export interface StepSummary {
  step: number;
  epoch: number;
  /** Loss of each objective of the stage (`itc`, `itm`, `itg`; or `lm`). */
  losses: Record<string, number>;
  globalBatch: number;
  learningRate: number;
  gradNorm: number;
}

export type GenerationOutcome = { kind: 'finished' } | { kind: 'maxSteps'; step: number };

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/** JSON through a Float32Array all-gather (one byte per element: these messages are small). */
async function allGatherJson<T>(coll: StepCollective, value: unknown): Promise<T[]> {
  const bytes = textEncoder.encode(JSON.stringify(value));
  const blocks = await coll.allGather(Float32Array.from(bytes));
  return blocks.map((b) => JSON.parse(textDecoder.decode(Uint8Array.from(b))) as T);
}

const flatten = (values: Map<string, Float32Array>, names: readonly string[]) => {
  const total = names.reduce((n, k) => n + values.get(k)!.length, 0);
  const out = new Float32Array(total);
  let o = 0;
  for (const k of names) {
    out.set(values.get(k)!, o);
    o += values.get(k)!.length;
  }
  return out;
};

/**
 * Runs one generation until the job finishes (`finished`), `maxSteps` is committed, or it is aborted (throws the
 * collective's error, or GenerationAbortedError). `onStep` sees every step.
 */
export async function runGeneration<L extends TrainLease>(
  core: TrainerCore, g: GenerationInput<L>, onStep?: (s: StepSummary) => void,
): Promise<GenerationOutcome> {
  const run = new GenerationRun(core, g, onStep);
  // 1. State.
  await run.restoreOrStart();
  for (;;) {
    // 2.–3. One epoch of steps, with its commits.
    const stopped = await run.trainEpoch();
    if (stopped) return stopped;
    // 4.–5. The epoch's last commit, then the next epoch (or the job's end).
    const finished = await run.endEpoch();
    if (finished) return finished;
  }
}

/** What this rank trained of one shard since the last commit. */
interface Touched<L> {
  lease: L;
  next: number;
  done: boolean;
}

/** The state of one generation on one rank, and its steps (runGeneration drives them in order). */
class GenerationRun<L extends TrainLease> {
  private readonly log: Logger;
  private readonly names: string[];
  private step = 0;
  private epoch = 0;
  private stepInEpoch = 0;
  private lastCommit: CommitRecord | null;
  private values!: Map<string, Float32Array>;
  /** Sample ids in the committed model, per epoch (`ledger.json` of every checkpoint, cumulative along parents). */
  private ledger: Record<string, string[]> = {};
  private parent: string | null;
  private samplesCommitted: number;
  // What this rank trained since the last commit.
  private readonly touched = new Map<string, Touched<L>>();
  private samplesSinceCommit: string[] = [];
  private stepsSinceCommit = 0;
  /** Step of the last checkpoint rank 0 evaluated (-1: none). */
  private evaluatedStep = -1;

  constructor(private readonly core: TrainerCore, private readonly g: GenerationInput<L>, private readonly onStep?: (s: StepSummary) => void) {
    this.log = (core.log ?? createLogger('trainer')).child({ generation: g.generation, rank: g.rank });
    this.names = core.model.trainable.map((p) => p.name);
    this.lastCommit = g.restore;
    this.parent = g.restore ? basename(g.restore.checkpointDir) : null;
    this.samplesCommitted = g.restore?.samples ?? 0;
  }

  private checkAbort(): void {
    const g = this.g;
    if (g.signal?.aborted) {
      const why = g.signal.reason instanceof Error ? g.signal.reason.message : String(g.signal.reason ?? 'membership changed');
      throw new GenerationAbortedError(`generation ${g.generation} was aborted (${why})`);
    }
  }

  private sameEpoch(c: CommitRecord | null): CommitRecord | null {
    return c && c.epoch === this.epoch ? c : null;
  }

  /** 1. Restore the assignment's commit, or start fresh from rank 0's parameters (broadcast) and an empty optimiser. */
  async restoreOrStart(): Promise<void> {
    const { core, g, log } = this;
    const { model, optimizer, options: o } = core;
    if (g.restore) {
      const t0 = performance.now();
      const ck = readCheckpoint(g.restore.checkpointDir, { configHash: o.configHash, params: model.trainable });
      this.values = new Map([...ck.params].map(([k, v]) => [k, v.data]));
      optimizer.loadState(ck.optimizer);
      if (ck.files['ledger.json']) this.ledger = JSON.parse(ck.files['ledger.json']) as Record<string, string[]>;
      this.step = ck.step;
      if (g.epoch === ck.epoch) {
        this.epoch = ck.epoch;
        this.stepInEpoch = ck.stepInEpoch;
      } else {
        this.epoch = g.epoch;
        this.stepInEpoch = 0;
      }
      core.metrics?.observeCheckpoint('restore', (performance.now() - t0) / 1000);
      log.info('restored commit', { step: this.step, epoch: this.epoch, dir: g.restore.checkpointDir });
    } else {
      const values = g.rank === 0 ? core.initialValues() : new Map(model.trainable.map((p) => [p.name, new Float32Array(p.shape.reduce((a, b) => a * b, 1))]));
      if (g.worldSize > 1) {
        const flat = flatten(values, this.names);
        await g.coll.broadcast(flat, 0);
        let off = 0;
        for (const k of this.names) {
          values.get(k)!.set(flat.subarray(off, off + values.get(k)!.length));
          off += values.get(k)!.length;
        }
      }
      optimizer.loadState({
        step: 0,
        expAvg: new Map(model.trainable.map((p) => [p.name, new Float32Array(values.get(p.name)!.length)])),
        expAvgSq: new Map(model.trainable.map((p) => [p.name, new Float32Array(values.get(p.name)!.length)])),
      });
      this.values = values;
      this.step = 0;
      this.epoch = g.epoch;
      this.stepInEpoch = 0;
      log.info('fresh start', { epoch: this.epoch });
    }
    model.setValues(this.values);
  }

  /**
   * 2.–3. One epoch: steps until every rank is out of data and the queue is drained (undefined), or `maxSteps` is
   * committed (that outcome). A commit every `checkpointEvery` steps.
   */
  async trainEpoch(): Promise<GenerationOutcome | undefined> {
    const { g } = this;
    const base = this.sameEpoch(this.lastCommit);
    const acked = new Set(base?.ackedShards ?? []);
    const open = () => g.data.open(this.epoch, {
      cursorFor: (d) => this.sameEpoch(this.lastCommit)?.cursors[d.id],
      skip: (d) => acked.has(d.id) || this.sameEpoch(this.lastCommit)?.ackedShards.includes(d.id) === true,
    });
    let stream = open();
    let dry = false;
    try {
      for (;;) {
        this.checkAbort();
        const tData = performance.now();
        let batch: Batch<L> | null = null;
        if (!dry) {
          const r = await stream.next();
          if (r.done) dry = true;
          else batch = r.value;
        }
        const dataSeconds = (performance.now() - tData) / 1000;
        this.checkAbort();
        const done = await this.trainStep(batch, dataSeconds);
        if (done === 'dry') {
          if (await this.epochOver()) return undefined;
          await stream.close();
          await new Promise((r) => setTimeout(r, this.core.options.drainPollMs ?? 500));
          stream = open();
          dry = false;
          continue;
        }
        if (done) return done;
      }
    } finally {
      await stream.close();
    }
  }

  /**
   * One synchronous step (an empty batch when this rank is out of data) and the same update on every rank; a
   * commit when one is due. 'dry' when no rank had data (no step was taken).
   */
  private async trainStep(batch: Batch<L> | null, dataSeconds: number): Promise<GenerationOutcome | 'dry' | undefined> {
    const { core, g, log } = this;
    const { model, optimizer, options: o } = core;
    const tVision = performance.now();
    const local: StageBatch = batch
      ? {
        batch: batch.batchSize, visionHidden: core.vision.encode(batch.pixelValues, batch.batchSize), inputIds: batch.inputIds,
        attentionMask: batch.attentionMask, captions: batch.captions,
      }
      : EMPTY_STAGE_BATCH;
    const visionSeconds = (performance.now() - tVision) / 1000;
    const res = await model.step(g.coll, local, { seed: o.seed, step: this.step });
    if (res === null) return 'dry';
    // 3. The same update on every rank.
    const tOpt = performance.now();
    const lr = o.learningRate(this.epoch, this.stepInEpoch);
    const { gradNorm } = optimizer.update(this.values, res.grads, lr);
    model.setValues(this.values);
    const optSeconds = (performance.now() - tOpt) / 1000;
    this.step++;
    this.stepInEpoch++;
    this.stepsSinceCommit++;
    const { step, epoch } = this;
    if (batch) {
      this.samplesSinceCommit.push(...batch.sampleIds);
      for (const c of batch.cursors) this.touched.set(c.descriptorId, { lease: c.lease, next: c.nextOrdinal, done: c.done });
    }
    const summary: StepSummary = { step, epoch, losses: res.losses, globalBatch: res.globalBatch, learningRate: lr, gradNorm };
    this.onStep?.(summary);
    core.metrics?.observeStep({
      step, epoch, generation: g.generation, rank: g.rank, worldSize: g.worldSize, losses: res.losses, samples: local.batch,
      globalSamples: res.globalBatch, learningRate: lr, gradNorm,
      phaseSeconds: { data: dataSeconds, forward_backward: visionSeconds + res.forwardBackwardSeconds, communication: res.communicationSeconds, optimizer: optSeconds },
      allReduceBytes: res.allReduceBytes, allReduceSeconds: res.allReduceSeconds,
    });
    core.metrics?.setShardsPending(g.data.heldLeases());
    if (g.rank === 0) {
      const seconds = dataSeconds + visionSeconds + res.forwardBackwardSeconds + res.communicationSeconds + optSeconds;
      g.commits.progress?.({ step, epoch, losses: res.losses, samples: this.samplesCommitted + this.samplesSinceCommit.length, samplesPerSec: seconds > 0 ? res.globalBatch / seconds : 0 });
    }
    const atMax = o.maxSteps > 0 && step >= o.maxSteps;
    const ev = o.evaluation;
    const evalDue = !!ev && ((ev.intervalSteps > 0 && step % ev.intervalSteps === 0) || (atMax && ev.atEnd));
    if (step % o.checkpointEvery === 0 || atMax || evalDue) await this.commit(evalDue);
    if (atMax) {
      log.info('reached maxSteps', { step });
      return { kind: 'maxSteps', step };
    }
    return undefined;
  }

  /** All ranks are out of data: is the epoch over (rank 0 decides from the queue and everyone's leases)? */
  private async epochOver(): Promise<boolean> {
    const { g } = this;
    const held = await g.coll.allGather(Float32Array.of(g.data.heldLeases()));
    const total = held.reduce((n, b) => n + b[0]!, 0);
    let over = 1;
    if (g.rank === 0) {
      const q = await g.data.queueState();
      over = q.pending === 0 && q.ackPending <= total ? 1 : 0;
      if (!over) this.log.info('epoch not drained yet', { pending: q.pending, ackPending: q.ackPending, heldInGeneration: total });
    }
    const decision = await g.coll.allGather(Float32Array.of(over));
    return decision[0]![0] === 1;
  }

  /**
   * 4.–5. Epoch over on every rank: its last commit, rank 0 reports it done, then every rank waits for the next
   * epoch (undefined) or the job's end (`finished`).
   */
  async endEpoch(): Promise<GenerationOutcome | undefined> {
    const { g } = this;
    const finishedShards = [...this.touched.values()].some((t) => t.done);
    const ev = this.core.options.evaluation;
    const evalAtEnd = !!ev && ev.atEnd && this.epoch >= ev.epochs - 1;
    // Nothing trained or finished since the last commit (e.g. restored at the epoch's end): nothing to commit.
    if (this.stepsSinceCommit > 0 || finishedShards) await this.commit(evalAtEnd);
    else if (evalAtEnd && g.rank === 0 && this.lastCommit && this.evaluatedStep !== this.step) {
      // The last commit came at a step: rank 0 evaluates it before reporting the epoch done (the others wait for
      // the next epoch or the job's end, on the coordinator).
      await this.evaluate(this.lastCommit.checkpointDir);
    }
    this.log.info('epoch done', { epoch: this.epoch, step: this.step });
    if (g.rank === 0) await g.commits.epochDone(this.epoch);
    let next: number;
    try {
      next = await g.commits.waitForEpoch(this.epoch + 1);
    } catch (e) {
      if ((e as Error).name === 'JobFinishedError') return { kind: 'finished' };
      throw e;
    }
    this.epoch = next;
    this.stepInEpoch = 0;
    this.touched.clear();
    return undefined;
  }

  /** Rank 0: the in-job evaluation of a checkpoint on disk (its errors are the hook's to report). */
  private async evaluate(checkpointDir: string): Promise<void> {
    const ev = this.core.options.evaluation;
    if (!ev || this.g.rank !== 0) return;
    this.evaluatedStep = this.step;
    await ev.run({ checkpointDir, step: this.step, epoch: this.epoch });
  }

  /**
   * A commit: 1. ranks all-gather their cursors, finished shards and sample ids; 2. rank 0 writes the checkpoint and
   * proposes it; 3. every rank waits until it is recorded, then acks the shards it holds; 4. the new commit becomes
   * the base of the next one.
   */
  private async commit(evaluate = false): Promise<void> {
    const { core, g, log } = this;
    const { model, optimizer, options: o } = core;
    const { step, epoch, stepInEpoch, touched } = this;
    this.checkAbort();
    // 1. Everyone's part.
    const mine = {
      cursors: Object.fromEntries([...touched].filter(([, t]) => !t.done).map(([id, t]) => [id, t.next])),
      completed: [...touched].filter(([, t]) => t.done).map(([id]) => id),
      samples: this.samplesSinceCommit,
    };
    const all = await allGatherJson<typeof mine>(g.coll, mine);
    const base = this.sameEpoch(this.lastCommit);
    const cursors: Record<string, number> = { ...(base?.cursors ?? {}) };
    const acked = new Set(base?.ackedShards ?? []);
    for (const r of all) Object.assign(cursors, r.cursors);
    for (const r of all) for (const id of r.completed) {
      acked.add(id);
      delete cursors[id];
    }
    const ids = all.flatMap((r) => r.samples);
    const seen = new Set<string>();
    const twice = ids.filter((id) => (seen.has(id) ? true : (seen.add(id), false)));
    if (twice.length) {
      // Only possible when a lease expired while its rank was still training it (the queue's ack wait shorter than
      // a step), so that the queue handed it out again.
      log.error('samples trained twice since the last commit: raise data.ackWaitMs above the longest step', { samples: twice.slice(0, 5), count: twice.length });
    }
    const nextLedger = { ...this.ledger, [epoch]: [...(this.ledger[epoch] ?? []), ...ids] };
    // 2. Rank 0 writes and proposes.
    if (g.rank === 0) {
      const t0 = performance.now();
      const s = optimizer.state();
      const dir = writeCheckpoint(o.checkpointRoot, {
        step, epoch, stepInEpoch,
        params: new Map(model.trainable.map((p) => [p.name, { shape: [...p.shape], data: this.values.get(p.name)! }])),
        optimizer: s, optimizerOptions: optimizer.options, rng: { seed: o.seed, frozenSeed: o.frozenSeed ?? o.seed, scheme: 'counter(seed, step, global row)' },
        cursors, ackedShards: [...acked], configHash: o.configHash, parent: this.parent,
        extra: { stage: model.stage, generation: g.generation, worldSize: g.worldSize, samples: { epoch, ids } },
        files: { 'ledger.json': JSON.stringify(nextLedger) },
      });
      core.metrics?.observeCheckpoint('write', (performance.now() - t0) / 1000);
      if (evaluate) await this.evaluate(dir);
      await g.commits.propose({
        step, epoch, checkpointDir: dir, cursors, ackedShards: [...acked], samples: this.samplesCommitted + ids.length, generation: g.generation,
      });
    }
    // 3. Recorded: ack what it holds.
    const committed = await g.commits.waitCommitted(step);
    let ackedNow = 0;
    for (const [id, t] of [...touched]) {
      if (!t.done) continue;
      await t.lease.ack();
      touched.delete(id);
      ackedNow++;
    }
    core.metrics?.addShardsAcked(ackedNow);
    core.metrics?.setShardsPending(g.data.heldLeases());
    if (g.rank === 0 && o.ledgerPath && ids.length) appendFileSync(o.ledgerPath, JSON.stringify({ epoch, step, ids }) + '\n');
    if (g.rank === 0 && o.keepCheckpoints) {
      const removed = pruneCheckpoints(o.checkpointRoot, committed.checkpointDir, o.keepCheckpoints);
      if (removed.length) log.debug('old checkpoints removed', { removed });
    }
    // 4. The base of the next commit.
    this.lastCommit = committed;
    this.ledger = nextLedger;
    this.parent = basename(committed.checkpointDir);
    this.samplesCommitted += ids.length;
    this.samplesSinceCommit = [];
    this.stepsSinceCommit = 0;
    log.debug('committed', { step, epoch, dir: committed.checkpointDir });
  }
}
