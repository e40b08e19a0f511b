/**
 * The trainer's public surface. The trainer process is `trainer/main.ts` (started by `blip2 launch`); other folders
 * import only from here.
 *
 * - Optimiser: `AdamW` (BLIP-2 parameter groups, optional clipping), `linearWarmupCosineLr` (LAVIS schedule).
 * - Checkpoints: `writeCheckpoint` / `readCheckpoint` (safetensors tensors + JSON metadata, temp dir + rename,
 *   sha256 verified on load, `CheckpointError` for a missing, truncated or corrupted file), `listCheckpoints`.
 * - The distributed stage-1 step: `distributedStage1Step(model, collective, localBatch, negatives)` over any
 *   `StepCollective` (`collectiveAdapter(group)` for trainer/collective, `createLocalGroup(n)` in process).
 * - The loop of one generation: `runGeneration(core, generation)`; `createTrainerCore(options)` builds the model,
 *   ViT, AdamW and schedule; `JetStreamEpochData` / `LocalEpochData` feed it batches.
 * - Metrics: `createTrainerMetrics({ registry, nodeId, runDir })`.
 * - Inference: `InferenceModel.load(inferenceSettings({ checkpoint }))`, then `caption(images)` / `ask(images, questions)`;
 *   `readImages` applies the evaluation transform.
 * - Export: `exportHfCheckpoint(settings, outDir, maxShardBytes)` writes a Hugging Face BLIP-2 checkpoint folder.
 * - Evaluation: `evaluateCheckpoint({ checkpoint, data, split, tasks })` -> `EvalReport` (retrieval, caption, vqa on a
 *   held-out split, with chance levels and baselines; JSON beside the checkpoint), `formatEvalReport(report)` (the
 *   console table), `evalFigures(report)` (task, metric, value, baseline rows).
 */
export {
  AdamW, blip2ParamGroups, linearWarmupCosineLr, type AdamWOptions, type AdamWState, type LinearWarmupCosineOptions,
} from './optim';
export {
  CheckpointError, writeCheckpoint, readCheckpoint, readCheckpointMeta, listCheckpoints, pruneCheckpoints, removeStaleTemporaries,
  checkpointName, checkpointRoot, CHECKPOINT_FORMAT, MODEL_FILE, OPTIMIZER_FILE, META_FILE,
  type CheckpointState, type CheckpointMeta, type ParamValue, type ReadCheckpointOptions, type WriteCheckpointOptions,
} from './checkpoint';
export {
  distributedStage1Step, collectiveAdapter, fetchRows, StepInputError,
  type StepCollective, type LocalBatch, type Stage1Model, type Stage1Dims, type Stage1Normalisers, type Stage1LossInputs,
  type NegativeChoice, type Stage1StepResult,
} from './step';
export { Stage1Runtime } from './stage1-runtime';
export { createLocalGroup } from './local-group';
export {
  runGeneration, GenerationAbortedError,
  type CommitChannel, type CommitRecord, type EpochData, type GenerationInput, type GenerationOutcome, type LoopCollective,
  type LoopOptions, type StepSummary, type TrainerCore, type TrainLease, type VisionEncoder,
} from './loop';
export { createTrainerCore, modelConfigFor, learningRateSchedule, resolveWeights, type BuiltTrainerCore, type OptimSettings, type TrainerCoreOptions } from './core';
export { JetStreamEpochData, LocalEpochData, LocalShardQueue, LocalLease, type BatchOptions, type JetStreamEpochDataOptions } from './epoch-data';
export { createTrainerMetrics, STEP_PHASES, type EvalRecord, type TrainerMetrics, type TrainerMetricsOptions, type StepRecord, type StepPhase } from './metrics';
export type { Objective } from './model';
export { type StageModel, type StageBatch, type StageStepResult } from './stage-model';
export { Stage2Runtime, distributedStage2Step } from './stage2-runtime';
export { pretrainLanguageModel, saveLanguageModel, contextQaAccuracy, type LmPretrainOptions, type LmDocument, type ContextQaReport } from './lm-pretrain';
export { exportHfCheckpoint, type ExportResult } from './export';
export {
  InferenceModel, inferenceImageSize, inferenceSettings, modelConfigOf, readImages, readImageBytes, VQA_PROMPT,
  type CaptionOptions, type InferenceSettings, type InferenceSettingsOptions, type InputImage,
} from './inference';
export {
  evaluateCheckpoint, formatEvalReport, evalFigures, taskRefusal, questionType, singleAnswerAccuracy, EVAL_TASKS, STAGE_TASKS,
  type EvalTask, type EvaluateOptions, type EvalReport, type RetrievalReport, type CaptionReport, type CaptionFigures, type VqaReport,
} from './evaluate';
