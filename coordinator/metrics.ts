// The coordinator's metrics (`blip2_coordinator_*`) on a registry passed in.
import { Counter, Gauge, type Registry } from 'prom-client';

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
  readonly messagesRejected: Counter<'subject' | 'reason'>;

  constructor(registry: Registry) {
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
    this.messagesRejected = new Counter({
      name: 'blip2_coordinator_messages_rejected_total', labelNames: ['subject', 'reason'], registers: [registry],
      help: 'Messages dropped or answered with an error, by subject (control, heartbeat) and reason (not-json, schema, auth, handler-error).',
    });
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
