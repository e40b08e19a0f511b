// The coordinator service's public surface: the service and its metrics, the protocol's pure state machine, and
// epoch planning over the dataloader. The process is coordinator/main.ts. The membership client that trainers use,
// and the job state and messages it shares with the service, are the nested room coordinator/client/.
export { Coordinator, type CoordinatorOptions, type EpochPublisher } from './coordinator';
export { CoordinatorMetrics } from './metrics';
export { step, initialState, type JobEvent, type JobAction, type ProtocolOptions, type StepResult } from './protocol';
export { DataEpochPublisher, loadJobIndex, samplesPerEpoch } from './epochs';
