/**
 * Collectives between trainers over gRPC (proto/collective.proto): ring all-reduce, all-gather of variable-sized
 * blocks, broadcast, barrier. The public surface of trainer/collective; other folders import only this file.
 *
 * Usage (one group per trainer process, kept across generations):
 *
 *   const group = await createCollectiveGroup({ jobId, token, listen: { host: '0.0.0.0', port: 0 }, timeoutMs: 30_000 });
 *   announce(group.address);                        // at rendezvous; learn this generation's ranks and addresses
 *   await group.connect({ generation, rank, worldSize, peers: [{ rank, host, port }, ...] });
 *   await group.broadcast(params, 0);               // parameters from rank 0 when a generation starts
 *   const feats = await group.allGather(block, rowWidth); // Float32Array per rank, in rank order
 *   await group.allReduce(grads, { op: 'mean', weight: samplesThisStep }); // in place; Σ w·g / Σ w
 *   await group.barrier();
 *   group.stats();                                  // cumulative calls, bytes, seconds per kind (for metrics)
 *   // membership changed: await group.connect({ generation: generation + 1, ... })
 *   await group.close();
 *
 * Every collective must be called by all ranks in the same order with the same sizes, one at a time. Any failure
 * (a peer lost or silent for `timeoutMs`, a refusal, a size mismatch) rejects with `CollectiveError`, which names
 * the operation (`op`, e.g. "allReduce#7") and the missing rank (`missingRank`); the group then refuses further
 * collectives until `connect()` with a new generation.
 */
export { createCollectiveGroup, CollectiveGroup, resolveCollectiveGroupOptions } from './group';
export { planBuckets } from './group';
export type { CollectiveGroupOptions, ResolvedCollectiveGroupOptions, ConnectOptions, AllReduceOptions, CollectiveStats, CollectiveOpStats, BucketPiece } from './group';
export { CollectiveError, type CollectiveFailure } from './errors';
export type { CollectiveTlsOptions } from './grpc-transport';
export { GrpcTransport, collectiveServiceDefinition, LINK_METHOD_PATH, metadataKeys } from './grpc-transport';
export type { Transport, TransportEvents, RingView, PeerAddress, LinkSide } from './transport';
