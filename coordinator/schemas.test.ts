// The job state and message schemas of coordinator/client/validate.ts: every state the protocol produces passes
// them, as do the messages members send; each broken rule is named with the field path.
import { describe, expect, test } from 'vitest';
import { initialState, step, type JobEvent, type ProtocolOptions } from './protocol';
import { parseControlReply, parseControlRequest, parseHeartbeat, parseJobState, parseProgressReport } from './client';

const o: ProtocolOptions = { minWorld: 1, maxWorld: 4, settleMs: 0, epochs: 2, maxSteps: 0 };
const json = (v: unknown) => JSON.stringify(v);

describe('job state schema', () => {
  test('every state of a job run through the protocol passes (waiting, running, committed, finished)', () => {
    let s = initialState('j');
    const seen = [s];
    const events: JobEvent[] = [
      { type: 'join', nodeId: 'a', address: 'h:1', incarnation: 'i1', now: 0 },
      { type: 'join', nodeId: 'b', address: 'h:2', incarnation: 'i2', now: 0 },
      { type: 'tick', now: 10 },
      { type: 'published', epoch: 0, shards: 2 },
    ];
    for (const e of events) seen.push((s = step(s, e, o).state));
    s = step(s, { type: 'queueReset', generation: s.generation }, o).state;
    seen.push(s);
    const commit = (stepN: number, acked: string[]): JobEvent => ({
      type: 'commit', nodeId: s.world[0]!.nodeId, generation: s.generation,
      commit: { step: stepN, epoch: s.epoch, checkpointDir: `/ck/${stepN}`, cursors: { x: 3 }, ackedShards: acked, samples: stepN * 4 },
    });
    seen.push((s = step(s, commit(1, ['s0']), o).state));
    seen.push((s = step(s, commit(2, ['s1']), o).state));
    seen.push((s = step(s, { type: 'epochDone', nodeId: s.world[0]!.nodeId, generation: s.generation, epoch: 0 }, o).state));
    expect(seen.some((x) => x.status === 'running' && x.committed)).toBe(true);
    for (const x of seen) expect(parseJobState(json(x)), json(x)).toEqual({ ok: true, value: x });
  });

  test('a broken state is refused with the path and the rule', () => {
    const s = initialState('j');
    expect(parseJobState(json({ ...s, status: 'done' }))).toMatchObject({ ok: false, reason: 'schema', message: expect.stringMatching(/^status: must be one of waiting, running, finished, got "done"/) });
    expect(parseJobState(json({ ...s, members: [{ nodeId: 'a' }] }))).toMatchObject({ ok: false, message: expect.stringMatching(/^members\[0\]\.address: must be a string, got missing/) });
    expect(parseJobState('{"version":')).toMatchObject({ ok: false, reason: 'not-json' });
  });
});

describe('message schemas', () => {
  test('what members send passes; missing and mistyped fields are named', () => {
    expect(parseHeartbeat(json({ token: 't', nodeId: 'a', address: 'h:1', incarnation: 'i' })).ok).toBe(true);
    expect(parseHeartbeat('null')).toMatchObject({ ok: false, message: 'message: must be a JSON object, got null' });
    expect(parseControlRequest(json({ type: 'leave', token: 't', nodeId: 'a' })).ok).toBe(true);
    expect(parseControlRequest(json({ type: 'commit', token: 't', nodeId: 'a', generation: 1, commit: { step: 1, epoch: 0, checkpointDir: '/c', cursors: {}, ackedShards: ['s'] } })).ok).toBe(true);
    expect(parseControlRequest(json({ type: 'commit', token: 't', nodeId: 'a', generation: 1, commit: { step: 1.5 } }))).toMatchObject({ ok: false, message: 'commit.step: must be an integer >= 0, got 1.5' });
    expect(parseControlReply(json({ ok: true })).ok).toBe(true);
    expect(parseControlReply(json({ ok: false, code: 'auth', message: 'm' })).ok).toBe(true);
    expect(parseControlReply(json({ ok: false, code: 'other', message: 'm' }))).toMatchObject({ ok: false, message: expect.stringMatching(/^code: must be one of auth, refused, bad-request/) });
    const report = { nodeId: 'a', generation: 1, step: 2, epoch: 0, losses: { itc: 1.2 }, samples: 8, samplesPerSec: 3.5, time: 1 };
    expect(parseProgressReport(json(report)).ok).toBe(true);
    expect(parseProgressReport(json({ ...report, losses: { itc: 'x' } }))).toMatchObject({ ok: false, message: 'losses["itc"]: must be a finite number, got "x"' });
  });
});
