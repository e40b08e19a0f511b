// The in-process shard queue that local (single-process) training reads its batches from.
import { describe, expect, it } from 'vitest';
import type { ShardDescriptor } from '../dataloader';
import { LocalShardQueue } from './epoch-data';

const desc = (i: number): ShardDescriptor => ({ id: `e0/d/s${i}#0-4`, epoch: 0, start: 0, end: 4 }) as unknown as ShardDescriptor;

describe('LocalShardQueue (in-memory work queue with explicit acks)', () => {
  it('serves in publication order, puts a nacked descriptor back in its place, and counts pending and in-flight', () => {
    const q = new LocalShardQueue();
    q.publish([0, 1, 2, 3].map(desc));
    const a = q.pull(() => undefined)!;
    const b = q.pull(() => 2)!;
    expect([a.descriptor.id, b.descriptor.id]).toEqual(['e0/d/s0#0-4', 'e0/d/s1#0-4']);
    expect(b.cursor).toBe(2);
    expect(q.state()).toEqual({ pending: 2, ackPending: 2 });
    b.nak();
    a.nak();
    expect(q.state()).toEqual({ pending: 4, ackPending: 0 });
    const again = [q.pull(() => undefined)!, q.pull(() => undefined)!];
    expect(again.map((l) => l.descriptor.id)).toEqual(['e0/d/s0#0-4', 'e0/d/s1#0-4']);
    void again[0]!.ack();
    again[0]!.nak(); // settled already: no effect
    expect(q.acked).toEqual(['e0/d/s0#0-4']);
    expect(q.state()).toEqual({ pending: 2, ackPending: 1 });
  });
});
