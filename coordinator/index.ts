// The coordinator's public surface: the membership client trainers use, the protocol and its types, the
// coordinator service and its metrics.
export * from './types';
export { JobMember, type JoinOptions } from './member';
export { Coordinator, type CoordinatorOptions, type EpochPublisher } from './coordinator';
export { CoordinatorMetrics } from './metrics';
export { step, initialState, assignmentOf, type JobEvent, type JobAction, type ProtocolOptions, type StepResult } from './protocol';
export { JobStore, RevisionConflictError, type StoredState } from './store';
export type { ProgressReport } from './wire';
export { DataEpochPublisher, loadJobIndex } from './epochs';
export { launchLocal, DEMO_OVERRIDES, type LaunchOptions, type LaunchSummary } from './local/launcher';
export { startNatsServer, freePort, type NatsServerHandle, type StartNatsServerOptions } from './local/nats-server';
