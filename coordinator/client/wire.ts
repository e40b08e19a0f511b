// Messages between members and the coordinator on the job's NATS subjects (JSON). Every message carries the job
// token; the coordinator refuses a wrong one with code 'auth'.
import type { CommitInfo } from './types';

export type ControlRequest =
  | { type: 'join'; token: string; nodeId: string; address: string; incarnation: string }
  | { type: 'leave'; token: string; nodeId: string; incarnation?: string }
  | { type: 'failure'; token: string; nodeId: string; generation: number; missingRank?: number; op?: string; message: string }
  | { type: 'commit'; token: string; nodeId: string; generation: number; commit: CommitInfo }
  | { type: 'epochDone'; token: string; nodeId: string; generation: number; epoch: number }
  /** `blip2 stop`: end the job at its next commit. nodeId names the requester (not a member). */
  | { type: 'stop'; token: string; nodeId: string };

export type ControlReply = { ok: true } | { ok: false; code: 'auth' | 'refused' | 'bad-request'; message: string };

export interface Heartbeat {
  token: string;
  nodeId: string;
  address: string;
  incarnation: string;
}

export interface ProgressReport {
  nodeId: string;
  generation: number;
  step: number;
  epoch: number;
  losses: Record<string, number>;
  samples: number;
  samplesPerSec: number;
  /** ms since the Unix epoch. */
  time: number;
}

export const encode = (v: unknown): string => JSON.stringify(v);
