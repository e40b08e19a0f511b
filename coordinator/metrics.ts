// The coordinator's metrics (`blip2_coordinator_*`) on a registry passed in: the job's state, its plan (for
// progress and ETA), the age of the last commit and the world's bounds (for alerts).
import { Counter, Gauge, type Registry } from 'prom-client';

/** What the job is planned to do (config and the dataset index). */
export interface JobPlan {
  epochs: number;
  samplesPerEpoch: number;
  batchSizePerTrainer: number;
  /** train.maxSteps (0 = no limit). */
  maxSteps: number;
  worldMin: number;
  worldMax: number;
  /** World size to estimate steps with until a world is formed (the launcher's world.trainers, within the bounds). */
  expectedWorld: number;
}

export class CoordinatorMetrics {
  readonly worldSize: Gauge;
  readonly members: Gauge;
  readonly generation: Gauge;
  readonly epoch: Gauge;
  readonly committedStep: Gauge;
  readonly shardsUncommitted: Gauge;
  readonly samplesCommitted: Gauge;
  readonly finished: Gauge;
  readonly shardsAcked: Counter;
  readonly commits: Counter;
  readonly generationChanges: Counter;
  readonly authRefused: Counter;
  readonly epochsPlanned: Gauge;
  readonly samplesPlanned: Gauge;
  readonly epochSamples: Gauge;
  readonly stepsPlanned: Gauge;
  readonly worldMin: Gauge;
  readonly worldMax: Gauge;
  readonly lastCommitTime: Gauge;
  readonly checkpointAge: Gauge;
  private plan: JobPlan | undefined;
  /** ms since the epoch of the last commit, when known. */
  private lastCommitMs: number | undefined;
  readonly messagesRejected: Counter<'subject' | 'reason'>;

  constructor(registry: Registry, private readonly now: () => number = Date.now) {
    const gauge = (name: string, help: string) => new Gauge({ name: `blip2_coordinator_${name}`, help, registers: [registry] });
    const counter = (name: string, help: string) => new Counter({ name: `blip2_coordinator_${name}`, help, registers: [registry] });
    this.worldSize = gauge('world_size', 'Trainers holding a rank in the current generation.');
    this.members = gauge('members', 'Registered trainers believed alive (ranked and spare).');
    this.generation = gauge('generation', 'Current generation (increases whenever the world changes).');
    this.epoch = gauge('epoch', 'Epoch being trained.');
    this.committedStep = gauge('committed_step', 'Step of the last committed checkpoint.');
    // blip2_coordinator_shards_pending / _in_flight (JetStream's view) come from the dataloader's ShardPublisher.
    this.shardsUncommitted = gauge('shards_uncommitted', 'Shard descriptors of the current epoch not yet in a committed checkpoint.');
    this.samplesCommitted = gauge('samples_committed', 'Samples trained in the last committed checkpoint since the job began.');
    this.finished = gauge('job_finished', '1 once the job has finished.');
    this.shardsAcked = counter('shards_acked_total', 'Shard descriptors committed (and released for ack).');
    this.commits = counter('commits_total', 'Checkpoints committed.');
    this.generationChanges = counter('generation_changes_total', 'Generation changes seen by this coordinator process.');
    this.authRefused = counter('auth_refused_total', 'Requests refused for a wrong job token.');
    this.epochsPlanned = gauge('epochs_planned', 'Epochs the job is configured to train (train.epochs).');
    this.epochSamples = gauge('epoch_samples', 'Samples in one epoch of the job\'s plan.');
    this.samplesPlanned = gauge('samples_planned', 'Samples the whole job trains: epochs x samples per epoch.');
    this.stepsPlanned = gauge(
      'steps_planned',
      'Estimated steps of the whole job at the current world size (epochs x ceil(samples per epoch / global batch)), capped by train.maxSteps; uneven shards add a few.',
    );
    this.worldMin = gauge('world_min', 'Fewest trainers the job trains with (world.min); below it the job waits.');
    this.worldMax = gauge('world_max', 'Most trainers the job takes into a generation (world.max).');
    // Both absent until a commit is known (a 0 would read as "1970" or "just now").
    const self = this;
    this.lastCommitTime = new Gauge({
      name: 'blip2_coordinator_last_commit_timestamp_seconds', registers: [registry],
      help: 'Unix time the last committed checkpoint was recorded (or written, after a coordinator restart); absent before the first.',
      collect() {
        if (self.lastCommitMs === undefined) this.remove();
        else this.set(self.lastCommitMs / 1000);
      },
    });
    this.checkpointAge = new Gauge({
      name: 'blip2_coordinator_checkpoint_age_seconds', help: 'Seconds since the last committed checkpoint; absent before the first.', registers: [registry],
      collect() {
        if (self.lastCommitMs === undefined) this.remove();
        else this.set(Math.max(0, (self.now() - self.lastCommitMs) / 1000));
      },
    });
    this.messagesRejected = new Counter({
      name: 'blip2_coordinator_messages_rejected_total', labelNames: ['subject', 'reason'], registers: [registry],
      help: 'Messages dropped or answered with an error, by subject (control, heartbeat) and reason (not-json, schema, auth, handler-error).',
    });
  }

  /** The job's plan; `updateWorld` then keeps the step estimate in line with the world size. */
  setPlan(p: JobPlan): void {
    this.plan = p;
    this.epochsPlanned.set(p.epochs);
    this.epochSamples.set(p.samplesPerEpoch);
    this.samplesPlanned.set(p.epochs * p.samplesPerEpoch);
    this.worldMin.set(p.worldMin);
    this.worldMax.set(p.worldMax);
    this.updateWorld(p.expectedWorld);
  }

  /** Steps planned at this world size (0, no world formed: the estimate stays as it was). */
  updateWorld(worldSize: number): void {
    const p = this.plan;
    if (!p || worldSize <= 0) return;
    const world = worldSize;
    const perEpoch = Math.ceil(p.samplesPerEpoch / (p.batchSizePerTrainer * world));
    const steps = p.epochs * perEpoch;
    this.stepsPlanned.set(p.maxSteps > 0 ? Math.min(p.maxSteps, steps) : steps);
  }

  /** The last commit was recorded (or written) at `ms` since the epoch. */
  setLastCommit(ms: number): void {
    this.lastCommitMs = ms;
  }

  private seenCommits?: number;
  private seenShardsAcked?: number;

  /** Counters that mirror the ledger in KV: advanced by the difference since the last update. */
  syncLedger(commits: number, shardsAcked: number): void {
    if (this.seenCommits !== undefined && commits > this.seenCommits) this.commits.inc(commits - this.seenCommits);
    if (this.seenShardsAcked !== undefined && shardsAcked > this.seenShardsAcked) this.shardsAcked.inc(shardsAcked - this.seenShardsAcked);
    if (this.seenCommits === undefined) { this.commits.inc(commits); this.shardsAcked.inc(shardsAcked); }
    this.seenCommits = commits;
    this.seenShardsAcked = shardsAcked;
  }
}
