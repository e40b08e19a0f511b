/**
 * dataloader: caption datasets, the data pipeline, and shard dispatch over NATS JetStream. Public surface; other
 * folders import only from here.
 *
 * Coordinator:
 *   const index = loadIndex('data/index.json');                       // `blip2 data index DIR` writes it
 *   const descs = planEpoch({ index, epoch, seed });                    // pure: same inputs, same plan
 *   const pub = new ShardPublisher({ nc, stream, subject, ackWaitMs, registry });
 *   await pub.ensureStream(); await pub.publishEpoch(descs); await pub.progress();
 *
 * Trainer:
 *   const consumer = new ShardConsumer({ nc, stream, subject, ackWaitMs, registry, cursorFor });
 *   const tokenizer = CaptionTokenizer.fromFile('data/tokenizer.json');   // bert: [CLS] .. [SEP], [DEC] appended
 *   const batches = createBatchStream({ source: consumer, dataRoot: 'data', tokenizer, batchSize: 8,
 *                                       transform: { mode: 'train', imageSize: 224 }, workers: 2, registry });
 *   const tracker = new CommitTracker({ ledger });
 *   for await (const b of batches) {
 *     // b.pixelValues [B,3,S,S], b.inputIds / b.attentionMask [B,T], b.sampleIds (ledger), b.cursors, b.completed
 *     step(b); tracker.observe(b);
 *     if (checkpointDue) { const data = tracker.checkpointState(); await commitCheckpoint({ ..., data }); await tracker.committed(); }
 *   }
 *   // After a restart: new ShardConsumer({ ..., cursorFor: cursorsFrom(checkpoint.data) }).
 *   // On rollback or shutdown: consumer.close() naks held leases so others get them now.
 *
 * Exactly-once: `SampleLedger.check(epoch, expectedIds)`.
 */
export { CaptionTokenizer, bertTokenizerJson, byteLevelBpeTokenizerJson, type CaptionTokenizerOptions, type TokenizedBatch, type TokenizerKind } from './tokenizer';
export { transformImage, type TransformOptions, type TransformedImage } from './transforms';
export {
  loadIndex, writeIndex, buildIndex, scanDatasets, describeIndex, trainingDatasets, checkShardFiles,
  type DatasetIndex, type DatasetEntry, type ShardEntry, type DatasetFormat, type IndexNote, type BuildIndexOptions,
} from './dataset-index';
export { descriptorId, sampleId, encodeDescriptor, parseDescriptor, type ShardDescriptor } from './descriptor';
export { planEpoch, type PlanEpochOptions } from './plan';
export { SampleLedger, type LedgerCheck } from './ledger';
export { CommitTracker, cursorsFrom, type AckableLease, type CommitTrackerOptions, type DataCheckpointState } from './commit-tracker';
export {
  createBatchStream, localShardSource,
  type Batch, type BatchStream, type BatchStreamOptions, type ShardCursor, type ShardLease, type ShardSource,
} from './batch-stream';
export {
  ShardPublisher, ShardConsumer, LeasedShard, rejectDescriptor,
  type ShardQueueOptions, type ShardPublisherOptions, type ShardConsumerOptions, type EpochProgress,
} from './jetstream';
export { shardQueueOptions } from './job-queue';
export { BadSampleError, DescriptorError, DatasetError, SKIP_REASONS, type SkipReason } from './errors';
export { dataSkipCounts, trainerDataMetrics, coordinatorDataMetrics, type TrainerDataMetrics, type CoordinatorDataMetrics } from './metrics';
export { writeSynthDataset, synthScene, synthVocabulary, synthLmVocabulary, synthCaptionVariants, LM_TOKENIZER_PATH, type SynthOptions, type SynthVariantKind } from './synth';
export { bertWords, missingTokenizerMessage, readIndexCaptions, wordPieceVocabulary, type WordPieceVocabulary } from './wordpiece-vocab';
export { checkDatasets, type CheckOptions, type CheckReport, type DatasetReport, type Distribution } from './check';
export { readEvalSplit, loadDataIndex, splitDatasets, type EvalSample, type EvalSplit, type ReadSplitOptions } from './eval-split';
export { preCaption } from './caption';
