/**
 * What `blip2 launch` checks of a job's checkpoints before it starts any process:
 *  - `removeStaleCheckpointTemporaries`: temporary checkpoint directories that a killed writer left behind;
 *  - `checkCommittedCheckpoint`: the job's committed checkpoint (from its state in KV) must pass every checksum;
 *    when it does not, the newest older checkpoint that does, as the commit to go back to;
 *  - `rewindJobState`: the job state with that older commit (and nothing after it): the epoch, the cursors and the
 *    shards it holds, a world to form again.
 */
import { existsSync } from 'node:fs';
import type { CommitInfo, JobState } from '../coordinator/client';
import { checkpointRoot, listCheckpoints, readCheckpoint, removeStaleTemporaries } from '../trainer';

/** Removes `.step-….tmp-…` directories under `dir` (nothing writes them while no process of the job runs). */
export function removeStaleCheckpointTemporaries(dir: string): string[] {
  return existsSync(dir) ? removeStaleTemporaries(dir) : [];
}

/** Why a checkpoint directory cannot be restored (every checksum, every tensor), or undefined when it can. */
function whyNotRestorable(dir: string): string | undefined {
  try {
    readCheckpoint(dir);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/** The commit a checkpoint directory holds (what the coordinator hands out as `restore`). */
function commitOf(dir: string): CommitInfo {
  const ck = readCheckpoint(dir);
  let samples: number | undefined;
  const ledger = ck.files['ledger.json'];
  if (ledger) samples = Object.values(JSON.parse(ledger) as Record<string, string[]>).reduce((n, ids) => n + ids.length, 0);
  return {
    step: ck.step, epoch: ck.epoch, checkpointDir: ck.dir, cursors: ck.cursors, ackedShards: ck.ackedShards,
    ...(samples !== undefined ? { samples } : {}),
  };
}

export interface CommittedCheck {
  /** Why the committed checkpoint cannot be restored. */
  problem: string;
  /** The newest older checkpoint that can, as a commit; null when there is none. */
  fallback: CommitInfo | null;
}

/** Undefined when the committed checkpoint passes every check (or there is none); else what is wrong and the fallback. */
export function checkCommittedCheckpoint(committed: CommitInfo | null): CommittedCheck | undefined {
  if (!committed) return undefined;
  const problem = whyNotRestorable(committed.checkpointDir);
  if (!problem) return undefined;
  const older = listCheckpoints(checkpointRoot(committed.checkpointDir))
    .filter((c) => c.step < committed.step)
    .sort((a, b) => b.step - a.step);
  for (const c of older) {
    if (whyNotRestorable(c.dir)) continue;
    return { problem, fallback: commitOf(c.dir) };
  }
  return { problem, fallback: null };
}

/** The job state going back to `fallback`: its epoch, cursors and shards; no world (every trainer joins again). */
export function rewindJobState(s: JobState, fallback: CommitInfo, why: string): JobState {
  const r = JSON.parse(JSON.stringify(s)) as JobState;
  r.committed = fallback;
  r.epoch = fallback.epoch;
  // The epoch's descriptors are republished from the commit by the next generation's queue rebuild; a later epoch's
  // are published again when it comes.
  r.publishedEpoch = Math.min(r.publishedEpoch, fallback.epoch);
  r.ledger = { ...r.ledger, samplesCommitted: fallback.samples ?? r.ledger.samplesCommitted };
  r.generation += 1;
  r.members = [];
  r.world = [];
  r.status = 'waiting';
  r.readySince = null;
  r.pendingJoin = false;
  r.reason = why;
  return r;
}
