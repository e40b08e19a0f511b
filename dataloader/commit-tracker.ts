/**
 * The data side of a checkpoint commit, so that a training loop acks exactly what it has committed:
 *
 *   for await (const b of batches) {
 *     step(b); tracker.observe(b);
 *     if (checkpointDue) {
 *       const data = tracker.checkpointState();   // store in the checkpoint (JSON)
 *       await writeAndCommitCheckpoint({ ..., data });
 *       await tracker.committed();                 // now: ledger record + ack the completed shards
 *     }
 *   }
 *   // restart / rollback: new ShardConsumer({ ..., cursorFor: cursorsFrom(lastCheckpoint.data) })
 *
 * Cursors are kept for every shard touched in the epoch, finished ones at their end, so a finished shard whose ack
 * was lost (death between commit and ack) is redelivered, read from its end, and acked without a sample.
 */
import type { Batch, ShardLease } from './batch-stream';
import type { ShardDescriptor } from './descriptor';
import type { SampleLedger } from './ledger';

/** A lease that can be acked (`LeasedShard`); local leases without `ack` are simply forgotten. */
export type AckableLease = ShardLease & { ack?(): Promise<void> };

/** What a checkpoint stores for the data path. */
export interface DataCheckpointState {
  /** Descriptor id -> next ordinal to read, for every shard touched since the epoch began. */
  cursors: Record<string, number>;
  /** Sample ids in this checkpoint that the previous one did not have, by epoch. */
  newSamples: Record<number, string[]>;
}

export interface CommitTrackerOptions {
  /** Ledger to record committed sample ids in. Default: none. */
  ledger?: SampleLedger;
}

export class CommitTracker<L extends AckableLease = AckableLease> {
  private readonly cursors = new Map<string, number>();
  private uncommittedSamples = new Map<number, string[]>();
  private uncommittedCompleted: L[] = [];
  private frozen: { samples: Map<number, string[]>; completed: L[] } | undefined;

  constructor(private readonly options: CommitTrackerOptions = {}) {}

  /** Records a batch whose update has been applied to the model. */
  observe(batch: Batch<L>): void {
    for (const c of batch.cursors) this.cursors.set(c.descriptorId, Math.max(this.cursors.get(c.descriptorId) ?? 0, c.nextOrdinal));
    batch.sampleIds.forEach((id, i) => {
      const e = batch.epochs[i]!;
      const list = this.uncommittedSamples.get(e) ?? [];
      list.push(id);
      this.uncommittedSamples.set(e, list);
    });
    this.uncommittedCompleted.push(...batch.completed);
  }

  /**
   * The state to write into the checkpoint about to be committed. Freezes what it covers: batches observed after
   * this call belong to the next checkpoint.
   */
  checkpointState(): DataCheckpointState {
    this.frozen = { samples: this.uncommittedSamples, completed: this.uncommittedCompleted };
    this.uncommittedSamples = new Map();
    this.uncommittedCompleted = [];
    return { cursors: Object.fromEntries(this.cursors), newSamples: Object.fromEntries(this.frozen.samples) };
  }

  /** The checkpoint from the last `checkpointState()` has committed: record the ledger, ack finished shards. */
  async committed(): Promise<{ samples: number; acked: number }> {
    const f = this.frozen;
    if (!f) throw new Error('committed() without a checkpointState() before it');
    this.frozen = undefined;
    let samples = 0;
    for (const [epoch, ids] of f.samples) { this.options.ledger?.record(epoch, ids); samples += ids.length; }
    let acked = 0;
    for (const lease of f.completed) if (lease.ack) { await lease.ack(); acked++; }
    return { samples, acked };
  }

  /** The checkpoint failed or the world changed: forget the frozen part (its leases stay held, to be nacked). */
  abandon(): void {
    this.frozen = undefined;
  }

  /** Drops cursors at an epoch boundary (descriptor ids carry the epoch, so this only frees memory). */
  resetCursors(): void {
    this.cursors.clear();
  }
}

/** `cursorFor` for a ShardConsumer or localShardSource, from a checkpoint's data state. */
export function cursorsFrom(state: Pick<DataCheckpointState, 'cursors'> | undefined): (d: ShardDescriptor) => number | undefined {
  return (d) => state?.cursors[d.id];
}
