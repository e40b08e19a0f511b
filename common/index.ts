// The shared folder's public surface: errors, logging, and (as they land) safetensors I/O, config and metrics
// helpers. Nothing here imports from the rest of the repository.
export * from './errors';
export * from './log';
export * from './safetensors';
export * from './config';
export * from './metrics';
export * from './rng';
