/**
 * The BLIP-2 model on tfjs: public surface for the trainer and the CLI.
 *
 * - Config: `Blip2Config` (Hugging Face config.json keys + `lavis_config`; `blip2ConfigFromJson` loads a checkpoint's config.json, `blip2ConfigFromLavis` the golden set's), `PRESETS` (`tiny`, `small`, `blip2-opt-2.7b` = `base`),
 *   `presetConfig(name)`, `paramManifest(config)` (HF names, shapes, groups), `trainableNames(config, stage)`,
 *   `trainableCount(config, stage)`.
 * - Parameters: `Params` (Map<HF name, tf.Tensor>), `createParams(config, seed, {stage|groups})`,
 *   `loadParams(files, config, {stage|groups})` (names/shapes checked both ways, `CheckpointMismatchError`),
 *   `saveParams(path, params)`, `disposeParams(params)`.
 * - Frozen ViT: `VisionBackbone.load(files, config)` keeps an F16 file 16-bit resident; `encode(pixelValues
 *   [B,3,S,S]) -> visionHidden [B,P,Dv]` (before ln_vision, no gradient); `residentBytes`, `paramCount`.
 * - Stage 1: `stage1Step(params, config, inputs, options) -> Stage1Result` (losses as numbers, grads of the
 *   normalised total w.r.t. the trainable names, `imageFeats`/`textFeat` for gathering, `simI2t`/`simT2i`,
 *   `itmWeightsT2i`/`itmWeightsI2t`, `dispose()`); `stage1Features` (forward-only features to all-gather before
 *   the step), `itcSimilarities`, `itmWeights` / `itmSamplingWeights`, `sampleHardNegatives` (counter-based draws
 *   keyed by seed, step and global row), `localNegatives`, `itgTargetCount` (local ITG token count, to all-reduce
 *   for `normalisers.itgTokens`), `lnVision`, and for gathers that pass
 *   gradients back `options.gatheredGrads` + `stage1FeatureBackward`. Masks of spec §5.4: `itcQueryMask`,
 *   `itcTextMask`, `itmMask`, `itgMask`.
 *
 * Signatures:
 *   createParams(config: Blip2Config, seed: number, options?: {stage?: 1|2; groups?: ParamGroup[]}): Params
 *   loadParams(files: string | string[], config: Blip2Config, options?: {stage?; groups?}): Params
 *   saveParams(path: string, params: Params, metadata?: Record<string, string>): Promise<void>
 *   trainableNames(config: Blip2Config, stage: 1 | 2): string[]
 *   VisionBackbone.load(files: string | string[], config): VisionBackbone; backbone.encode(pixels: Tensor4D): Tensor3D
 *   stage1Features(params, config, {visionHidden, inputIds, attentionMask}): {imageFeats: Tensor3D; textFeat: Tensor2D}
 *   stage1Step(params, config, inputs: Stage1Inputs, options?: Stage1Options): Stage1Result
 * - Stage 2: the frozen LM behind `LanguageModel` (language-model.ts): `OptLanguageModel.load(files, config)`
 *   keeps an F16 file 16-bit resident (`weights.residentBytes`, `weights.widening`), widened one layer at a time in
 *   the forward and again in the backward; `stage2Step(params, lm, {visionHidden, optInputIds, optAttentionMask,
 *   normalisers: {tokens}}, {promptLength}) -> Stage2Result` (loss, labels, grads w.r.t. `trainableNames(config, 2)`);
 *   `stage2TargetCount(lm, {ids, mask}, promptLength)` (a rank's target tokens, to all-reduce for `normalisers.tokens`:
 *   all-reduce SUM of the ranks' grads is then the one-process gradient). `optDecoder` is the float32 reference.
 *
 * Distributed use, per step on each rank r (batch B_r, offset = Σ_{s<r} B_s, N = Σ B_s):
 *   1. f = stage1Features(params, config, local); all-gather f.imageFeats [B_r,Q,E] and f.textFeat [B_r,E] in rank
 *      order -> allImageFeats [N,Q,E], allTextFeat [N,E].
 *   2. sims = itcSimilarities(temp, f.imageFeats, f.textFeat, allImageFeats, allTextFeat); w = itmWeights(sims..., offset);
 *      neg = sampleHardNegatives({t2i, i2t}, B_r, N, {seed, step, rankOffset: offset}) (gathered columns);
 *      fetch the negative images' visionHidden and texts from their owners -> `negatives`
 *      (`negVisionHidden` [B,P,Dv], or `negImageIndex` into [visionHidden ; extraVisionHidden] to reuse local images).
 *   3. r = stage1Step(params, config, {visionHidden, inputIds, attentionMask, gathered: {allImageFeats, allTextFeat,
 *      offset}, negatives, normalisers: {itcRows: N, itmRows: 3N, itgTokens: global count}}); all-reduce SUM of
 *      r.grads gives the one-process gradient (with default local normalisers, all-reduce MEAN does when batches
 *      are equal).
 */
export * from './config';
export { ModelInputError } from './errors';
export * from './params';
export { VisionBackbone, visionBlock } from './vision';
export { linear, layerNorm, gelu, attention, splitHeads, mergeHeads, l2normalize, crossEntropySum, stopGradient } from './layers';
export {
  embeddings, queryTokens, qformerLayer, qformerEncoder, projectImage, selectImages, additiveMask,
  type KeyValue, type HeadKeyValue, type PassOptions, type LayerOptions,
} from './qformer';
export { qformerLockstep, type LockstepStream } from './qformer-lockstep';
export { itcSimilarities, itcLoss, imageFeatures, textFeature, type Pass } from './itc';
export { itmWeights, itmSamplingWeights, sampleHardNegatives, drawIndex, localNegatives, itmLoss, itmScores, type ItmNegatives, type NegativeKey } from './itm';
export { itgTargetCount, itgTargets, itgLoss, lmHead, type ItgTargets } from './itg';
export {
  stage1Step, stage1StepWithSchedule, DEFAULT_SCHEDULE, OBJECTIVES,
  type Objective, type Stage1Inputs, type Stage1Options, type Stage1Result, type GatheredFeatures, type LossNormalisers, type PassSchedule,
} from './stage1';
export { stage1Features, stage1FeatureBackward, lnVision, crossAttentionLayers, imageItcFeatures, textItcFeatures } from './features';
export * from './masks';
export { FrozenWeights, frozenCall, type WideningCounters } from './frozen-weights';
export type { LanguageModel, LanguageModelText, LanguageModelTargets } from './language-model';
export { OptLanguageModel, optDecoder, optLayer, optLmHead, optPositionIds, optCausalMask, optTargets, prefixedMask, IGNORE_INDEX } from './opt';
export { stage2Step, stage2TargetCount, type Stage2Inputs, type Stage2Options, type Stage2Result } from './stage2';
