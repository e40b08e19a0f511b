// CommitTracker: shards acked only after the checkpoint that holds them commits; cursors restored.
import { describe, expect, test } from 'vitest';
import type { Batch } from './batch-stream';
import { CommitTracker, cursorsFrom } from './commit-tracker';
import type { ShardDescriptor } from './descriptor';
import { SampleLedger } from './ledger';

const desc = (id: string, end: number): ShardDescriptor =>
  ({ v: 1, id, epoch: 0, seed: 0, dataset: 'd', format: 'webdataset', shard: `${id}.tar`, start: 0, end, order: 0 });

function lease(id: string, end: number) {
  const l = { descriptor: desc(id, end), cursor: 0, acks: 0, async ack() { l.acks++; } };
  return l;
}
type L = ReturnType<typeof lease>;

function batch(ids: string[], cursors: Array<[L, number, boolean]>, completed: L[]): Batch<L> {
  return {
    sampleIds: ids, captions: ids, pixelValues: new Float32Array(0), inputIds: new Int32Array(0), attentionMask: new Int32Array(0),
    batchSize: ids.length, seqLength: 0, imageSize: 0, epochs: ids.map(() => 0),
    cursors: cursors.map(([l, n, done]) => ({ lease: l, descriptorId: l.descriptor.id, nextOrdinal: n, done })), completed,
  };
}

describe('CommitTracker', () => {
  test('acks only shards completed before the committed checkpoint, records the ledger once', async () => {
    const ledger = new SampleLedger();
    const t = new CommitTracker<L>({ ledger });
    const a = lease('a', 3), b = lease('b', 3);
    t.observe(batch(['a0', 'a1'], [[a, 2, false]], []));
    t.observe(batch(['a2', 'b0'], [[a, 3, true], [b, 1, false]], [a]));
    const state = t.checkpointState();
    expect(state).toEqual({ cursors: { a: 3, b: 1 }, newSamples: { 0: ['a0', 'a1', 'a2', 'b0'] } });
    // A batch observed while the checkpoint is being written belongs to the next one.
    t.observe(batch(['b1', 'b2'], [[b, 3, true]], [b]));
    expect(a.acks).toBe(0);
    expect(await t.committed()).toEqual({ samples: 4, acked: 1 });
    expect([a.acks, b.acks]).toEqual([1, 0]);
    expect(ledger.size(0)).toBe(4);
    expect(t.checkpointState().cursors).toEqual({ a: 3, b: 3 });
    await t.committed();
    expect(b.acks).toBe(1);
    expect(ledger.check(0, ['a0', 'a1', 'a2', 'b0', 'b1', 'b2']).ok).toBe(true);
    expect(cursorsFrom(state)(desc('b', 3))).toBe(1);
    expect(cursorsFrom(undefined)(desc('b', 3))).toBeUndefined();
  });

  test('an abandoned checkpoint acks nothing', async () => {
    const t = new CommitTracker<L>();
    const a = lease('a', 1);
    t.observe(batch(['a0'], [[a, 1, true]], [a]));
    t.checkpointState();
    t.abandon();
    await expect(t.committed()).rejects.toThrow(/without a checkpointState/);
    expect(a.acks).toBe(0);
  });
});
