/**
 * The collectives' errors: what a trainer does about each (restore the last commit and re-rendezvous, or stop).
 */
import { Blip2Error } from '../../common';

/** Why a collective failed; lets a caller log and count failures by cause. */
export type CollectiveFailure =
  | 'peer-lost' // a neighbour's stream broke (process died, connection reset)
  | 'timeout' // a neighbour sent nothing within timeoutMs
  | 'refused' // a peer refused us (token, job, stale generation) or sent something we refuse
  | 'mismatch' // ranks disagree on the operation or on tensor sizes
  | 'aborted' // another rank failed and said so
  | 'closed'; // the group was closed or re-connected while the operation ran

/**
 * A collective failed mid-step. The group is unusable for this generation: every later operation fails with the
 * same error until `connect()` is called for a new generation. Recovery: restore the last commit and go back to
 * rendezvous.
 */
export class CollectiveError extends Blip2Error {
  constructor(
    message: string,
    readonly failure: CollectiveFailure,
    /** The operation, e.g. `allReduce#12` (kind and sequence number in the generation), or `connect`. */
    readonly op: string,
    /** The rank that is missing or at fault, when known; -1 otherwise. */
    readonly missingRank: number,
    readonly generation: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
