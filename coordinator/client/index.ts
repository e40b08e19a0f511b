// The membership client: what a trainer needs to take part in a job, and the job's shared records. `JobMember`
// (join with the job token, heartbeat from a worker thread, watch the job state for assignments and commits, send
// failure / commit / epochDone / leave requests), the job state and its store in NATS KV (`JobStore`, read by
// members and written with compare-and-set by the coordinator), the control messages and their schemas (every
// reader validates what it receives: validate.ts), and the errors a member acts on. The trainer imports the
// coordinator only through this file; the coordinator service imports it too.
export {
  AuthError, GenerationChangedError, JobFinishedError, ProtocolError,
  type Assignment, type CommitInfo, type JobState, type JobStatus, type MemberRecord, type PeerInfo,
} from './types';
export { assignmentOf } from './assignment';
export { JobMember, type JoinOptions } from './member';
export { InvalidJobStateError, JobStore, RevisionConflictError, type StoredState } from './store';
export { encode, type ControlReply, type ControlRequest, type Heartbeat, type ProgressReport } from './wire';
export {
  checkControlRequest, parseControlEnvelope, parseControlReply, parseControlRequest, parseHeartbeat, parseJobState, parseProgressReport,
  type MessageFault, type Parsed,
} from './validate';
