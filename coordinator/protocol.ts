/**
 * The job protocol as a pure state machine: `step(state, event, options) -> { state, actions, error }`.
 * The coordinator stores the state in NATS KV with compare-and-set on the entry's revision (coordinator/client/store.ts),
 * so a restarted coordinator, or a second one racing it, never loses or forks the job.
 *
 * Lifecycle:
 *  1. `start` (coordinator boot): publish the current epoch's shard descriptors if not yet published.
 *     Every new generation also rebuilds the shard queue (`resetQueue`: purge, republish what the last commit
 *     does not hold, in plan order); its assignments are handed out after `queueReset`.
 *  2. `join` while waiting: members collect; once `world.min` are present (and `settleMs` has passed on a `tick`,
 *     or `world.max` are present) a generation is formed: ranks, ring order, restore = last commit.
 *  3. `commit` (rank 0, after its checkpoint is on disk): recorded with the epoch's finished shards; members may
 *     then ack those shards. A member that joined while running is taken into a new generation at this point.
 *  4. `lost` (missed heartbeats) / `leave` / `failure` (a survivor's collective error): a new generation with the
 *     survivors, restoring the last commit; below `world.min` the job waits.
 *  5. `epochDone` (rank 0, every shard of the epoch committed): next epoch, or `finished` after the last.
 *  6. `stop` (`blip2 stop`): the job ends at the next commit, its final checkpoint; at once when no generation is
 *     training (the last commit stands).
 */
import type { CommitInfo, JobState, MemberRecord, PeerInfo } from './client';

export interface ProtocolOptions {
  /** Fewest members to train with. */
  minWorld: number;
  /** Most members in a generation. */
  maxWorld: number;
  /** Wait this long after reaching minWorld before forming a generation (more may come). */
  settleMs: number;
  /** Epochs of the job. */
  epochs: number;
  /** Stop once a commit reaches this step (0 = no limit). */
  maxSteps: number;
}

export type JobEvent =
  | { type: 'start' }
  | { type: 'tick'; now: number }
  | { type: 'join'; nodeId: string; address: string; incarnation: string; now: number }
  | { type: 'lost'; nodeId: string; reason: string; now: number }
  | { type: 'leave'; nodeId: string; incarnation?: string; now: number }
  | { type: 'failure'; nodeId: string; generation: number; missingRank?: number; op?: string; message: string; now: number }
  | { type: 'commit'; nodeId: string; generation: number; commit: CommitInfo }
  | { type: 'epochDone'; nodeId: string; generation: number; epoch: number }
  | { type: 'published'; epoch: number; shards: number }
  | { type: 'queueReset'; generation: number }
  | { type: 'stop'; by: string };

export type JobAction =
  | { type: 'publishEpoch'; epoch: number }
  | { type: 'resetQueue'; epoch: number; generation: number }
  | { type: 'generation'; generation: number; worldSize: number; reason: string }
  | { type: 'committed'; step: number; epoch: number }
  | { type: 'finished' };

export interface StepResult {
  state: JobState;
  actions: JobAction[];
  /** Set when the event is refused: the reply to the requester, the state is unchanged. */
  error?: string;
}

export function initialState(jobId: string): JobState {
  return {
    version: 1,
    jobId,
    status: 'waiting',
    generation: 0,
    members: [],
    world: [],
    epoch: 0,
    publishedEpoch: -1,
    epochShards: 0,
    queueGeneration: 0,
    committed: null,
    ledger: { commits: 0, samplesCommitted: 0, shardsAcked: 0 },
    pendingJoin: false,
    readySince: null,
    nextJoinSeq: 0,
    reason: 'job created',
  };
}

const clone = (s: JobState): JobState => JSON.parse(JSON.stringify(s)) as JobState;

/** Ranks of a new world: members of the old world keep their order (rank 0 stays rank 0), then by arrival. */
function orderForWorld(s: JobState): MemberRecord[] {
  const oldRank = new Map(s.world.map((p) => [p.nodeId, p.rank]));
  return [...s.members]
    .sort((a, b) => {
      const ra = oldRank.get(a.nodeId) ?? Infinity;
      const rb = oldRank.get(b.nodeId) ?? Infinity;
      return ra !== rb ? ra - rb : a.joinSeq - b.joinSeq;
    });
}

function newGeneration(s: JobState, o: ProtocolOptions, reason: string, actions: JobAction[]): void {
  s.generation += 1;
  s.reason = reason;
  s.pendingJoin = false;
  if (s.members.length >= o.minWorld) {
    const chosen = orderForWorld(s).slice(0, o.maxWorld);
    s.world = chosen.map((m, rank): PeerInfo => ({ rank, nodeId: m.nodeId, address: m.address }));
    s.status = 'running';
    s.readySince = null;
  } else {
    s.world = [];
    s.status = 'waiting';
    s.readySince = null;
  }
  actions.push({ type: 'generation', generation: s.generation, worldSize: s.world.length, reason });
  if (s.status === 'running') actions.push({ type: 'resetQueue', epoch: s.epoch, generation: s.generation });
}

function removeMember(s: JobState, o: ProtocolOptions, nodeId: string, reason: string, now: number, actions: JobAction[]): void {
  const before = s.members.length;
  s.members = s.members.filter((m) => m.nodeId !== nodeId);
  if (s.members.length === before) return;
  const inWorld = s.world.some((p) => p.nodeId === nodeId);
  if (s.status === 'running' && inWorld) newGeneration(s, o, reason, actions);
  else if (s.status === 'waiting') s.readySince = s.members.length >= o.minWorld ? (s.readySince ?? now) : null;
}

/** Tries to form the first (or a waiting job's next) generation. */
function maybeForm(s: JobState, o: ProtocolOptions, now: number, actions: JobAction[]): void {
  if (s.status !== 'waiting') return;
  if (s.members.length < o.minWorld) {
    s.readySince = null;
    return;
  }
  s.readySince ??= now;
  if (s.members.length >= o.maxWorld || now - s.readySince >= o.settleMs) {
    newGeneration(s, o, `world formed with ${Math.min(s.members.length, o.maxWorld)} member(s)`, actions);
    if (s.publishedEpoch < s.epoch) actions.push({ type: 'publishEpoch', epoch: s.epoch });
  }
}

function finish(s: JobState, actions: JobAction[], reason: string): void {
  s.status = 'finished';
  s.reason = reason;
  s.world = [];
  actions.push({ type: 'finished' });
}

export function step(state: JobState, event: JobEvent, o: ProtocolOptions): StepResult {
  const s = clone(state);
  const actions: JobAction[] = [];
  const refuse = (error: string): StepResult => ({ state, actions: [], error });

  if (s.status === 'finished' && event.type !== 'leave' && event.type !== 'lost' && event.type !== 'start' && event.type !== 'tick') {
    return refuse(`job ${s.jobId} has finished`);
  }

  switch (event.type) {
    case 'start':
      if (s.status !== 'finished' && s.publishedEpoch < s.epoch) actions.push({ type: 'publishEpoch', epoch: s.epoch });
      break;

    case 'tick':
      maybeForm(s, o, event.now, actions);
      break;

    case 'join': {
      const existing = s.members.find((m) => m.nodeId === event.nodeId);
      if (existing && existing.address === event.address && existing.incarnation === event.incarnation) break; // a retried join
      if (existing) {
        // The same node id from another process: the old one is gone. Drop it (a new generation if it held a
        // rank), then take the new one in like any newcomer.
        removeMember(s, o, event.nodeId, `node ${event.nodeId} restarted (${event.address})`, event.now, actions);
      }
      s.members.push({ nodeId: event.nodeId, address: event.address, incarnation: event.incarnation, joinSeq: s.nextJoinSeq++ });
      if (s.status === 'waiting') maybeForm(s, o, event.now, actions);
      else if (s.status === 'running' && !s.world.some((p) => p.nodeId === event.nodeId) && s.world.length < o.maxWorld) {
        s.pendingJoin = true;
      }
      break;
    }

    case 'lost':
      removeMember(s, o, event.nodeId, `node ${event.nodeId} lost: ${event.reason}`, event.now, actions);
      break;

    case 'leave': {
      // A late leave from an earlier process of a node id that has rejoined since must not remove the new one.
      const m = s.members.find((x) => x.nodeId === event.nodeId);
      if (m && event.incarnation !== undefined && m.incarnation !== event.incarnation) break;
      removeMember(s, o, event.nodeId, `node ${event.nodeId} left`, event.now, actions);
      break;
    }

    case 'failure': {
      if (event.generation !== s.generation) return { state, actions: [] }; // already handled: a stale report
      if (s.status !== 'running') return { state, actions: [] };
      const missing = event.missingRank !== undefined ? s.world[event.missingRank] : undefined;
      if (event.missingRank !== undefined && !missing) {
        return refuse(`failure report names rank ${event.missingRank}, but generation ${s.generation} has ranks 0..${s.world.length - 1}`);
      }
      const what = `${event.op ? event.op + ': ' : ''}${event.message}`;
      if (missing && missing.nodeId !== event.nodeId) {
        removeMember(s, o, missing.nodeId, `node ${missing.nodeId} (rank ${missing.rank}) reported missing by ${event.nodeId}: ${what}`, event.now, actions);
      } else {
        newGeneration(s, o, `failure reported by ${event.nodeId}: ${what}`, actions);
      }
      break;
    }

    case 'commit': {
      const c = event.commit;
      if (s.status !== 'running') return refuse(`commit of step ${c.step} refused: the job is ${s.status}, not running`);
      if (event.generation !== s.generation) {
        return refuse(`commit of step ${c.step} refused: generation ${event.generation} is stale (current ${s.generation})`);
      }
      if (s.world[0]?.nodeId !== event.nodeId) return refuse(`commit of step ${c.step} refused: ${event.nodeId} is not rank 0`);
      if (s.committed && c.step === s.committed.step && c.checkpointDir === s.committed.checkpointDir) break; // retried
      if (s.committed && c.step <= s.committed.step) {
        return refuse(`commit of step ${c.step} refused: step ${s.committed.step} is already committed`);
      }
      if (c.epoch !== s.epoch) return refuse(`commit of step ${c.step} refused: it is of epoch ${c.epoch}, the job is in epoch ${s.epoch}`);
      const previous = s.committed && s.committed.epoch === c.epoch ? s.committed.ackedShards : [];
      const acked = [...new Set([...previous, ...c.ackedShards])].sort();
      s.ledger.commits += 1;
      s.ledger.shardsAcked += acked.length - previous.length;
      if (c.samples !== undefined) s.ledger.samplesCommitted = c.samples;
      s.committed = { ...c, cursors: { ...c.cursors }, ackedShards: acked };
      actions.push({ type: 'committed', step: c.step, epoch: c.epoch });
      if (s.stopRequested) finish(s, actions, `stopped by ${s.stopRequested} at the commit of step ${c.step}`);
      else if (o.maxSteps > 0 && c.step >= o.maxSteps) finish(s, actions, `step ${c.step} reached train.maxSteps`);
      else if (s.pendingJoin) newGeneration(s, o, `taking in ${s.members.length - s.world.length} new member(s) at step ${c.step}`, actions);
      break;
    }

    case 'stop':
      if (s.stopRequested) break; // asked twice
      s.stopRequested = event.by;
      if (s.status !== 'running') finish(s, actions, `stopped by ${event.by} while ${s.status} (last commit: ${s.committed ? `step ${s.committed.step}` : 'none'})`);
      break;

    case 'epochDone': {
      if (event.epoch < s.epoch) break; // retried after it was applied
      if (event.epoch > s.epoch) return refuse(`epoch ${event.epoch} done refused: the job is in epoch ${s.epoch}`);
      if (event.generation !== s.generation) {
        return refuse(`epoch ${event.epoch} done refused: generation ${event.generation} is stale (current ${s.generation})`);
      }
      const done = s.committed?.epoch === s.epoch ? s.committed.ackedShards.length : 0;
      if (s.publishedEpoch !== s.epoch || done !== s.epochShards) {
        return refuse(`epoch ${event.epoch} done refused: ${done} of ${s.epochShards} shards committed`);
      }
      if (s.epoch + 1 >= o.epochs) {
        finish(s, actions, `epoch ${s.epoch} (the last) done`);
      } else {
        s.epoch += 1;
        actions.push({ type: 'publishEpoch', epoch: s.epoch });
        if (s.pendingJoin) newGeneration(s, o, `taking in ${s.members.length - s.world.length} new member(s) at epoch ${s.epoch}`, actions);
      }
      break;
    }

    case 'published':
      if (event.epoch > s.publishedEpoch) {
        s.publishedEpoch = event.epoch;
        s.epochShards = event.shards;
      }
      break;

    case 'queueReset':
      if (event.generation > s.queueGeneration) s.queueGeneration = event.generation;
      break;
  }
  return { state: s, actions };
}
