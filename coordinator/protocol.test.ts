// The job protocol's pure state machine over world sizes 1-4: rendezvous, losses, spares, joins at commits,
// commits, epochs, failures, restarts and queue rebuilds.
import { describe, expect, test } from 'vitest';
import { assignmentOf, type JobState } from './client';
import { initialState, step, type JobEvent, type ProtocolOptions } from './protocol';

const opts = (o: Partial<ProtocolOptions> = {}): ProtocolOptions => ({ minWorld: 2, maxWorld: 4, settleMs: 100, epochs: 2, maxSteps: 0, ...o });

/** Applies events; like the coordinator, answers every `resetQueue` action with its `queueReset` event. */
function run(state: JobState, events: JobEvent[], o: ProtocolOptions) {
  const actions = [];
  for (const e of events) {
    const r = step(state, e, o);
    expect(r.error, `event ${JSON.stringify(e)}`).toBeUndefined();
    state = r.state;
    actions.push(...r.actions);
    for (const a of r.actions) if (a.type === 'resetQueue') state = step(state, { type: 'queueReset', generation: a.generation }, o).state;
  }
  return { state, actions };
}
const join = (n: number, now = 0): JobEvent => ({ type: 'join', nodeId: `n${n}`, address: `h:${5000 + n}`, incarnation: `i${n}`, now });
const commit = (s: JobState, stepN: number, acked: string[], cursors: Record<string, number> = {}, samples?: number): JobEvent => ({
  type: 'commit', nodeId: s.world[0]!.nodeId, generation: s.generation,
  commit: { step: stepN, epoch: s.epoch, checkpointDir: `/ck/${stepN}`, cursors, ackedShards: acked, ...(samples !== undefined ? { samples } : {}) },
});

/** A running job of `worldSize` members with epoch 0 published with `shards` shards. */
function running(worldSize: number, o: ProtocolOptions, shards = 3) {
  const joins = Array.from({ length: worldSize }, (_, i) => join(i));
  return run(initialState('j'), [...joins, { type: 'tick', now: 1000 }, { type: 'published', epoch: 0, shards }], o);
}

describe.each([1, 2, 3, 4])('world of %i', (worldSize) => {
  const o = opts({ minWorld: Math.min(2, worldSize), maxWorld: 4 });

  test('rendezvous forms one generation with ranks in arrival order and publishes epoch 0', () => {
    const { state, actions } = running(worldSize, o);
    expect(state.status).toBe('running');
    expect(state.generation).toBe(1);
    expect(state.world.map((p) => p.nodeId)).toEqual(Array.from({ length: worldSize }, (_, i) => `n${i}`));
    expect(actions.filter((a) => a.type === 'publishEpoch')).toEqual([{ type: 'publishEpoch', epoch: 0 }]);
    for (let r = 0; r < worldSize; r++) {
      const a = assignmentOf(state, `n${r}`)!;
      expect(a).toMatchObject({ rank: r, worldSize, generation: 1, epoch: 0, restore: null });
      expect(a.peers.map((p) => p.address)).toEqual(Array.from({ length: worldSize }, (_, i) => `h:${5000 + i}`));
    }
  });

  test('a lost member bumps the generation; survivors restore the last commit; ranks stay in order', () => {
    let { state } = running(worldSize, o);
    ({ state } = run(state, [commit(state, 10, ['a'], { b: 4 })], o));
    const victim = `n${worldSize - 1}`;
    const r = run(state, [{ type: 'lost', nodeId: victim, reason: 'no heartbeat', now: 2000 }], o);
    expect(r.state.generation).toBe(2);
    if (worldSize - 1 >= o.minWorld) {
      expect(r.state.status).toBe('running');
      expect(r.state.world.map((p) => p.nodeId)).toEqual(Array.from({ length: worldSize - 1 }, (_, i) => `n${i}`));
      expect(assignmentOf(r.state, 'n0')!.restore).toMatchObject({ step: 10, checkpointDir: '/ck/10', cursors: { b: 4 }, ackedShards: ['a'] });
    } else {
      expect(r.state.status).toBe('waiting');
      expect(assignmentOf(r.state, 'n0')).toBeNull();
    }
    expect(assignmentOf(r.state, victim)).toBeNull();
  });
});

describe('rendezvous', () => {
  test('waits settleMs after reaching minWorld, at once at maxWorld', () => {
    const o = opts({ minWorld: 2, maxWorld: 3, settleMs: 500 });
    let { state } = run(initialState('j'), [join(0, 0), join(1, 10)], o);
    expect(state.status).toBe('waiting');
    expect(state.readySince).toBe(10);
    ({ state } = run(state, [{ type: 'tick', now: 400 }], o));
    expect(state.status).toBe('waiting');
    ({ state } = run(state, [{ type: 'tick', now: 510 }], o));
    expect(state.status).toBe('running');
    const fast = run(initialState('j'), [join(0), join(1), join(2)], o).state;
    expect(fast.status).toBe('running');
    expect(fast.world).toHaveLength(3);
  });

  test('below minWorld the job waits, and forms again when members return', () => {
    const o = opts({ minWorld: 2, settleMs: 0 });
    let { state } = running(2, o);
    ({ state } = run(state, [{ type: 'lost', nodeId: 'n1', reason: 'x', now: 5 }], o));
    expect(state).toMatchObject({ status: 'waiting', generation: 2, world: [] });
    ({ state } = run(state, [join(7, 6), { type: 'tick', now: 7 }], o));
    expect(state).toMatchObject({ status: 'running', generation: 3 });
    expect(state.world.map((p) => p.nodeId)).toEqual(['n0', 'n7']);
  });

  test('a retried join changes nothing; the same node at a new address replaces its old self', () => {
    const o = opts({ minWorld: 1, maxWorld: 2, settleMs: 100 });
    let { state } = running(2, o);
    expect(step(state, join(1), o).state).toEqual(state);
    ({ state } = run(state, [{ type: 'join', nodeId: 'n1', address: 'h:9999', incarnation: 'i1', now: 1 }], o));
    // The old n1 is dropped at once (a new generation without it); the new one waits for the next commit.
    expect(state.generation).toBe(2);
    expect(state.world.map((p) => p.nodeId)).toEqual(['n0']);
    expect(state.pendingJoin).toBe(true);
    expect(state.members.find((m) => m.nodeId === 'n1')!.address).toBe('h:9999');
    ({ state } = run(state, [commit(state, 1, [])], o));
    expect(state.world.map((p) => p.nodeId)).toEqual(['n0', 'n1']);
    // Same address, another process (a restart that reused the port): dropped and taken in again too.
    ({ state } = run(state, [{ type: 'join', nodeId: 'n1', address: 'h:9999', incarnation: 'other', now: 2 }], o));
    expect(state.generation).toBe(4);
    expect(state.world.map((p) => p.nodeId)).toEqual(['n0']);
    expect(state.members.find((m) => m.nodeId === 'n1')!.incarnation).toBe('other');
  });

  test('spares beyond maxWorld wait; a member joining while running is taken in at the next commit', () => {
    const o = opts({ minWorld: 1, maxWorld: 3, settleMs: 100 });
    let { state } = running(2, o);
    ({ state } = run(state, [join(5, 1)], o));
    expect(state.generation).toBe(1);
    expect(state.pendingJoin).toBe(true);
    const r = run(state, [commit(state, 4, [])], o);
    expect(r.state.generation).toBe(2);
    expect(r.state.world.map((p) => p.nodeId)).toEqual(['n0', 'n1', 'n5']);
    expect(assignmentOf(r.state, 'n5')!.restore!.step).toBe(4);
    // A fourth member is a spare: the world is full.
    const spare = step(r.state, join(6, 2), o);
    expect(spare.state.pendingJoin).toBe(false);
    expect(assignmentOf(spare.state, 'n6')).toBeNull();
  });
});

describe('commits', () => {
  const o = opts({ minWorld: 2, settleMs: 0 });

  test('refuses stale generations, non-zero ranks, old steps and other epochs; accepts a retry', () => {
    const { state } = running(2, o);
    const c = commit(state, 5, ['s1']);
    expect(step(state, { ...c, generation: 0 } as JobEvent, o).error).toMatch(/generation 0 is stale \(current 1\)/);
    expect(step(state, { ...c, nodeId: 'n1' } as JobEvent, o).error).toMatch(/n1 is not rank 0/);
    const ok = step(state, c, o);
    expect(ok.error).toBeUndefined();
    expect(ok.actions).toEqual([{ type: 'committed', step: 5, epoch: 0 }]);
    const retry = step(ok.state, c, o);
    expect(retry.error).toBeUndefined();
    expect(retry.actions).toEqual([]);
    expect(step(ok.state, commit(ok.state, 5, [], {}), o).error).toBeUndefined(); // same step and dir: a retry
    expect(step(ok.state, { ...commit(ok.state, 3, []) }, o).error).toMatch(/step 5 is already committed/);
    const other = commit(ok.state, 9, []) as Extract<JobEvent, { type: 'commit' }>;
    expect(step(ok.state, { ...other, commit: { ...other.commit, epoch: 1 } }, o).error).toMatch(/epoch 1, the job is in epoch 0/);
  });

  test('acked shards accumulate over the epoch and feed the ledger', () => {
    let { state } = running(2, o, 3);
    ({ state } = run(state, [commit(state, 2, ['b'])], o));
    ({ state } = run(state, [commit(state, 4, ['a'], {}, 40)], o));
    expect(state.committed!.ackedShards).toEqual(['a', 'b']);
    expect(state.ledger).toEqual({ commits: 2, shardsAcked: 2, samplesCommitted: 40 });
  });

  test('maxSteps finishes the job at the commit that reaches it', () => {
    const om = opts({ minWorld: 2, settleMs: 0, maxSteps: 6 });
    let { state } = running(2, om);
    const r = step(state, commit(state, 6, []), om);
    expect(r.state.status).toBe('finished');
    expect(r.actions.at(-1)).toEqual({ type: 'finished' });
    state = r.state;
    expect(step(state, join(9), om).error).toMatch(/has finished/);
  });
});

describe('stop', () => {
  const o = opts({ minWorld: 2, settleMs: 0 });

  test.each([1, 2, 3, 4])('a running job of %i ends at the next commit, its final checkpoint', (worldSize) => {
    const ow = opts({ minWorld: Math.min(2, worldSize), settleMs: 0 });
    let { state } = running(worldSize, ow);
    ({ state } = run(state, [commit(state, 2, [])], ow));
    const r = step(state, { type: 'stop', by: 'blip2 stop (host-a)' }, ow);
    expect(r.state).toMatchObject({ status: 'running', stopRequested: 'blip2 stop (host-a)' });
    expect(r.actions).toEqual([]);
    expect(step(r.state, { type: 'stop', by: 'again' }, ow).state.stopRequested).toBe('blip2 stop (host-a)');
    const end = step(r.state, commit(r.state, 4, ['a']), ow);
    expect(end.state).toMatchObject({ status: 'finished', committed: { step: 4, checkpointDir: '/ck/4' } });
    expect(end.state.reason).toBe('stopped by blip2 stop (host-a) at the commit of step 4');
    expect(end.actions).toEqual([{ type: 'committed', step: 4, epoch: 0 }, { type: 'finished' }]);
  });

  test('a waiting job ends at once, keeping its last commit; a finished job refuses it', () => {
    let { state } = running(2, o);
    ({ state } = run(state, [commit(state, 2, []), { type: 'lost', nodeId: 'n1', reason: 'x', now: 5 }], o));
    expect(state.status).toBe('waiting');
    const r = step(state, { type: 'stop', by: 'blip2 stop' }, o);
    expect(r.state).toMatchObject({ status: 'finished', committed: { step: 2 } });
    expect(r.state.reason).toBe('stopped by blip2 stop while waiting (last commit: step 2)');
    expect(step(r.state, { type: 'stop', by: 'blip2 stop' }, o).error).toMatch(/has finished/);
  });
});

describe('epochs', () => {
  const o = opts({ minWorld: 2, settleMs: 0, epochs: 2 });

  test('epochDone needs every shard committed, then publishes the next epoch; the last one finishes the job', () => {
    let { state } = running(2, o, 2);
    ({ state } = run(state, [commit(state, 3, ['a'])], o));
    const early = step(state, { type: 'epochDone', nodeId: 'n0', generation: state.generation, epoch: 0 }, o);
    expect(early.error).toMatch(/1 of 2 shards committed/);
    ({ state } = run(state, [commit(state, 5, ['b'])], o));
    let r = step(state, { type: 'epochDone', nodeId: 'n0', generation: state.generation, epoch: 0 }, o);
    expect(r.error).toBeUndefined();
    expect(r.state.epoch).toBe(1);
    expect(r.actions).toEqual([{ type: 'publishEpoch', epoch: 1 }]);
    expect(step(r.state, { type: 'epochDone', nodeId: 'n0', generation: state.generation, epoch: 0 }, o).error).toBeUndefined(); // retry
    state = run(r.state, [{ type: 'published', epoch: 1, shards: 1 }], o).state;
    ({ state } = run(state, [commit(state, 8, ['c'])], o));
    expect(state.committed!.ackedShards).toEqual(['c']); // a new epoch starts a new list
    r = step(state, { type: 'epochDone', nodeId: 'n0', generation: state.generation, epoch: 1 }, o);
    expect(r.state.status).toBe('finished');
    expect(r.actions).toEqual([{ type: 'finished' }]);
  });

  test('start publishes an epoch that was planned but not yet published (coordinator restart)', () => {
    const s = initialState('j');
    expect(step(s, { type: 'start' }, o).actions).toEqual([{ type: 'publishEpoch', epoch: 0 }]);
    const published = run(s, [{ type: 'published', epoch: 0, shards: 2 }], o).state;
    expect(step(published, { type: 'start' }, o).actions).toEqual([]);
  });
});

describe('failures', () => {
  const o = opts({ minWorld: 1, maxWorld: 4, settleMs: 100 });

  test('a report naming the missing rank drops that member; a stale report is ignored', () => {
    let { state } = running(3, o);
    const r = step(state, { type: 'failure', nodeId: 'n0', generation: 1, missingRank: 1, op: 'allReduce', message: 'peer gone', now: 1 }, o);
    expect(r.state.generation).toBe(2);
    expect(r.state.world.map((p) => p.nodeId)).toEqual(['n0', 'n2']);
    expect(r.state.reason).toMatch(/n1 \(rank 1\) reported missing by n0: allReduce: peer gone/);
    state = r.state;
    const stale = step(state, { type: 'failure', nodeId: 'n2', generation: 1, missingRank: 0, message: 'x', now: 2 }, o);
    expect(stale.state).toBe(state);
    expect(stale.actions).toEqual([]);
  });

  test('a report without a missing rank restarts the generation with the same members', () => {
    const { state } = running(2, o);
    const r = step(state, { type: 'failure', nodeId: 'n1', generation: 1, message: 'nan loss', now: 1 }, o);
    expect(r.state.generation).toBe(2);
    expect(r.state.world.map((p) => p.nodeId)).toEqual(['n0', 'n1']);
  });

  test('a report naming a rank that does not exist is refused', () => {
    const { state } = running(2, o);
    expect(step(state, { type: 'failure', nodeId: 'n1', generation: 1, missingRank: 7, message: 'x', now: 1 }, o).error).toMatch(/ranks 0..1/);
  });
});

describe('the shard queue', () => {
  const o = opts({ minWorld: 1, maxWorld: 2, settleMs: 100 });

  test('every new generation rebuilds the queue, and its assignments wait for that', () => {
    let { state } = running(2, o);
    ({ state } = run(state, [commit(state, 3, ['a'], { b: 2 })], o));
    const r = step(state, { type: 'lost', nodeId: 'n1', reason: 'x', now: 5 }, o);
    expect(r.actions).toContainEqual({ type: 'resetQueue', epoch: 0, generation: 2 });
    expect(r.state.queueGeneration).toBe(1);
    expect(assignmentOf(r.state, 'n0')).toBeNull(); // the old generation's leases may still be in the queue
    const ready = step(r.state, { type: 'queueReset', generation: 2 }, o).state;
    expect(assignmentOf(ready, 'n0')).toMatchObject({ generation: 2, worldSize: 1, restore: { step: 3, ackedShards: ['a'], cursors: { b: 2 } } });
    // A late reset of an older generation changes nothing.
    expect(step(ready, { type: 'queueReset', generation: 1 }, o).state.queueGeneration).toBe(2);
  });

  test('a waiting job does not rebuild the queue until it runs again', () => {
    const om = opts({ minWorld: 2, settleMs: 0 });
    let { state } = running(2, om);
    const r = step(state, { type: 'lost', nodeId: 'n1', reason: 'x', now: 5 }, om);
    expect(r.state.status).toBe('waiting');
    expect(r.actions.some((a) => a.type === 'resetQueue')).toBe(false);
    ({ state } = run(r.state, [join(3, 6)], om));
    expect(state.status).toBe('running');
    expect(state.queueGeneration).toBe(state.generation);
  });
});

test('a leave from an earlier incarnation of a node id does not remove the process that replaced it', () => {
  const o = opts({ minWorld: 1, maxWorld: 2, settleMs: 100 });
  let { state } = running(2, o);
  ({ state } = run(state, [{ type: 'join', nodeId: 'n1', address: 'h:1', incarnation: 'new', now: 1 }], o));
  const late = step(state, { type: 'leave', nodeId: 'n1', incarnation: 'i1', now: 2 }, o);
  expect(late.state).toEqual(state);
  const own = step(state, { type: 'leave', nodeId: 'n1', incarnation: 'new', now: 3 }, o);
  expect(own.state.members.map((m) => m.nodeId)).toEqual(['n0']);
});
