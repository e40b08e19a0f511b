// Types of the job protocol shared by the coordinator and the membership client: the job state stored in NATS KV,
// a member's assignment and commit records, and the errors a member acts on.
import { Blip2Error, UsageError } from '../../common';

export interface PeerInfo {
  rank: number;
  nodeId: string;
  /** host:port of the trainer's collective gRPC server. */
  address: string;
}

export interface CommitInfo {
  step: number;
  epoch: number;
  /** Directory written by rank 0 (trainer/checkpoint.ts format). */
  checkpointDir: string;
  /** Shard key -> next sample index committed (partly consumed shards). */
  cursors: Record<string, number>;
  /**
   * Shard keys fully consumed and contained in this commit. In what the coordinator hands out (restore,
   * waitCommitted) this is cumulative over the commit's epoch: every shard of the epoch finished so far.
   */
  ackedShards: string[];
  /** Samples trained in the committed model since the job began (optional; feeds the ledger summary). */
  samples?: number;
}

export interface Assignment {
  jobId: string;
  generation: number;
  rank: number;
  worldSize: number;
  /** Peers in rank (= ring) order. */
  peers: PeerInfo[];
  /** Epoch to train. */
  epoch: number;
  /** Last committed checkpoint to restore from (null = fresh start). */
  restore: CommitInfo | null;
}

export interface MemberRecord {
  nodeId: string;
  address: string;
  /** Random id of the member's process: the same node id with another incarnation is a restarted process. */
  incarnation: string;
  /** Order of arrival; ranks of a new world follow the old ranks, then arrival order. */
  joinSeq: number;
}

export type JobStatus = 'waiting' | 'running' | 'finished';

/** The whole job state, stored as one JSON value in NATS KV and updated with compare-and-set. */
export interface JobState {
  version: 1;
  jobId: string;
  status: JobStatus;
  /** Increases every time the world changes (formed, member lost, member taken in, failure reported). */
  generation: number;
  /** Registered members believed alive, in arrival order (may include spares beyond world.max). */
  members: MemberRecord[];
  /** The current generation's ranks (empty unless running). */
  world: PeerInfo[];
  /** Epoch being trained. */
  epoch: number;
  /** Last epoch whose shard descriptors were published (-1: none) and how many shards it has. */
  publishedEpoch: number;
  epochShards: number;
  /**
   * Generation for which the shard queue was last rebuilt: purged, then the epoch's descriptors not yet committed
   * republished in plan order. Assignments of a generation are handed out only once this reaches it, so every
   * generation starts from exactly the committed state, in the same order, without waiting for lost leases.
   */
  queueGeneration: number;
  /** Last committed checkpoint (ackedShards cumulative over its epoch). */
  committed: CommitInfo | null;
  ledger: { commits: number; samplesCommitted: number; shardsAcked: number };
  /** A member joined while running: take it in at the next commit. */
  pendingJoin: boolean;
  /**
   * `blip2 stop` asked the job to end (who asked, from the request): it ends at the next commit, which becomes its
   * final checkpoint (at once when no generation is training). Absent in states written before it existed.
   */
  stopRequested?: string | null;
  /** While waiting: when members first reached world.min (ms since epoch), null otherwise. */
  readySince: number | null;
  nextJoinSeq: number;
  /** Why the generation last changed (for logs and the launcher's display). */
  reason: string;
}

/** The job token was refused: fix the configuration (job.token); retrying does not help. */
export class AuthError extends UsageError {}
/** The job has finished: the trainer exits 0. */
export class JobFinishedError extends Blip2Error {}
/** The generation changed while waiting for something of the old one: abort the step, wait for the next assignment. */
export class GenerationChangedError extends Blip2Error {
  constructor(readonly generation: number, message: string) {
    super(message);
  }
}
/** The coordinator refused a request (stale generation, bad commit): the message says why. */
export class ProtocolError extends Blip2Error {}
