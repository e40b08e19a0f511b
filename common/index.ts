// The shared folder's public surface: errors, logging, safetensors I/O, config and metric helpers, the NATS
// connection and subject names of a job, and the process wrapper. Nothing here imports from the rest of the
// repository (the bottom of the house's import layers).
export * from './errors';
export * from './log';
export * from './safetensors';
export * from './config';
export * from './metrics';
export * from './health';
export * from './rng';
export * from './nats';
export * from './process';
