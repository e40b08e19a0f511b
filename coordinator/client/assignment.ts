// A member's view of the job state: the rank, peers, epoch and commit to restore that a generation gives one node.
import type { Assignment, JobState } from './types';

/** The assignment of `nodeId` in `state`, or null when it holds no rank. */
export function assignmentOf(s: JobState, nodeId: string): Assignment | null {
  if (s.status !== 'running' || s.queueGeneration < s.generation) return null;
  const me = s.world.find((p) => p.nodeId === nodeId);
  if (!me) return null;
  return {
    jobId: s.jobId,
    generation: s.generation,
    rank: me.rank,
    worldSize: s.world.length,
    peers: s.world.map((p) => ({ ...p })),
    epoch: s.epoch,
    restore: s.committed ? { ...s.committed, cursors: { ...s.committed.cursors }, ackedShards: [...s.committed.ackedShards] } : null,
  };
}
