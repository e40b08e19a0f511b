/**
 * The stage-1 pre-training step (BLIP-2 §3.2; LAVIS blip2_qformer.py Blip2Qformer.forward): ITC + ITM + ITG on the
 * Q-Former, with gradients of the summed loss w.r.t. the trainable parameters only. The objectives live in itc.ts,
 * itm.ts and itg.ts; this file is the driver.
 *
 * Work the original repeats and this step does not (the numbers are the same):
 * - each image's cross-attention keys/values are projected once per cross layer and selected for the ITC query
 *   pass and ITM's three groups (LAVIS projects the positive image three times and the negative once more);
 * - ITG's text rows attend to the query keys/values cached from the ITC query pass (as LAVIS does with
 *   past_key_values), and its LM head only runs on rows that have a target;
 * - when the ITM negatives are known up front (always, in the distributed trainer), the four passes advance through
 *   the layers together and share their GEMMs (qformer-lockstep.ts).
 */
import { trainableNames, type Blip2Config } from './config';
import { gradients, tf } from '../engine';
import { ModelInputError } from './errors';
import { imageFeatures, itcLoss, itcQueryPass, itcSimilarities, itcTextPass, textFeature } from './itc';
import { itmLoss, itmPass, itmWeights, sampleHardNegatives, type ItmNegatives } from './itm';
import { itgLoss, itgPass, itgTargets, lmHead, type ItgTargets } from './itg';
import { layerNorm, param, stopGradient } from './layers';
import { projectImage, qformerEncoder, selectImages, type HeadKeyValue, type KeyValue } from './qformer';
import { qformerLockstep } from './qformer-lockstep';
import type { Params } from './params';

/** The stage-1 objectives, in the order their losses are reported and reduced. */
export const OBJECTIVES = ['itc', 'itm', 'itg'] as const;
export type Objective = (typeof OBJECTIVES)[number];

/** ITC features of every rank, concatenated in rank order (detached: no gradient flows back into them). */
export interface GatheredFeatures {
  /** [N,Q,E] l2-normalised image features of all ranks. */
  allImageFeats: tf.Tensor3D;
  /** [N,E] l2-normalised text features of all ranks. */
  allTextFeat: tf.Tensor2D;
  /** Row of this rank's first sample in the gathered rows (= sum of the batch sizes of lower ranks). */
  offset: number;
}

/** Global denominators: each loss = (sum over local rows) / count. Defaults are the local counts. */
export interface LossNormalisers {
  /** Image-text pairs in the global batch (ITC rows). Default: local B. */
  itcRows?: number;
  /** ITM pairs (3 per sample). Default: local 3B. */
  itmRows?: number;
  /** ITG target tokens (labels ≠ -100 after the shift). Default: local count. */
  itgTokens?: number;
}

export interface Stage1Inputs {
  /** [B,P,Dv] frozen ViT output before ln_vision (ln_vision runs inside, so its gradient flows). */
  visionHidden: tf.Tensor3D;
  /** [B,T] int32 token ids ([CLS] w… [SEP] [PAD]…). */
  inputIds: tf.Tensor2D;
  /** [B,T] int32, 1 = real token. */
  attentionMask: tf.Tensor2D;
  /** ITC features of all ranks; absent = world size 1 (the local features, detached on the other side). */
  gathered?: GatheredFeatures;
  /** ITM negatives; absent = sampled here from the ITM weights, keyed by `options.seed` (world size 1 only). */
  negatives?: ItmNegatives;
  normalisers?: LossNormalisers;
}

export interface Stage1Options {
  /** Objectives in the loss; default all three. */
  objectives?: Objective[];
  /** Seed of the hard-negative draws when `inputs.negatives` is absent; default 0. */
  seed?: number;
  /** At world size 1, detach the "gathered" side of ITC as LAVIS does; default true (false: plain gradient). */
  detachGathered?: boolean;
  /** Compute gradients; default true. */
  grads?: boolean;
  /** Parameters to differentiate; default `trainableNames(config, 1)`. */
  trainable?: string[];
  /** Keep intermediate activations in `result.activations` (golden names); default false. */
  activations?: boolean;
  /**
   * Also return the gradient of the loss w.r.t. the gathered features (`result.gatheredGrads`), for gathering that
   * passes gradients back (see `stage1FeatureBackward`); default false. Needs `inputs.gathered`.
   */
  gatheredGrads?: boolean;
}

/**
 * How the passes are run; every schedule gives the same numbers. Not a model option: the benchmark times the
 * schedules against each other and the tests check that they agree (`stage1StepWithSchedule`).
 */
export interface PassSchedule {
  /** Project each image's cross-attention keys/values once and reuse them (false: per pass and ITM row, as LAVIS). */
  reuseImageKeyValues: boolean;
  /**
   * Advance the four passes through the layers together (`qformerLockstep`) when that is possible: the ITM negatives
   * are given, image keys/values are reused, all objectives are on and no activations are asked for.
   */
  lockstep: boolean;
}

export const DEFAULT_SCHEDULE: PassSchedule = { reuseImageKeyValues: true, lockstep: true };

export interface Stage1Result {
  losses: { itc: number; itm: number; itg: number; total: number };
  /** Gradient of the (normalised) total loss for each trainable name. Empty when `grads: false`. */
  grads: Map<string, tf.Tensor>;
  /** [B,Q,E] local image features (for gathering). */
  imageFeats: tf.Tensor3D;
  /** [B,E] local text features (for gathering). */
  textFeat: tf.Tensor2D;
  /** [B,N] similarities (local rows × gathered columns), divided by temp. */
  simI2t: tf.Tensor2D;
  simT2i: tf.Tensor2D;
  /** [B,N] hard-negative sampling distributions (positives masked). */
  itmWeightsT2i: tf.Tensor2D;
  itmWeightsI2t: tf.Tensor2D;
  /** Negatives used for ITM, as rows of `[visionHidden ; extraVisionHidden]` and of the gathered texts. */
  negImageIndex?: number[];
  negTextIndex?: number[];
  /** d loss / d gathered features ([N,Q,E], [N,E]) when `options.gatheredGrads`. */
  gatheredGrads?: { allImageFeats: tf.Tensor3D; allTextFeat: tf.Tensor2D };
  /** Golden-named activations when asked (`imageEmbeds`, `queryOutput`, `itmLogits`, `itgLogits`, ...). */
  activations: Map<string, tf.Tensor>;
  /** Release every tensor in this result. */
  dispose(): void;
}

/** One stage-1 step: losses, their gradients w.r.t. the trainable parameters, and what the distributed trainer gathers. */
export function stage1Step(params: Params, config: Blip2Config, inputs: Stage1Inputs, options: Stage1Options = {}): Stage1Result {
  return stage1StepWithSchedule(params, config, inputs, options, DEFAULT_SCHEDULE);
}

/** `stage1Step` with the passes run as `schedule` says (benchmarks and equivalence tests). */
export function stage1StepWithSchedule(params: Params, config: Blip2Config, inputs: Stage1Inputs, options: Stage1Options, schedule: PassSchedule): Stage1Result {
  // 1. Check the inputs; ITG targets and the normalisers come from the token ids alone.
  const plan = planStep(config, inputs, options);
  // 2. Forward (the losses, as Blip2Qformer.forward) and backward (gradients w.r.t. the trainable parameters).
  const record = new Recorder();
  const forward = (p: Params) => stage1Forward(p, config, inputs, plan, schedule, record);
  const { total, grads, gatheredGrads } = differentiate(params, config, inputs, options, forward);
  // 3. Numbers out; the tensors the distributed trainer gathers stay, owned by the result.
  return record.result(total, grads, gatheredGrads);
}

/** What the forward pass needs to know before it runs. */
interface StepPlan {
  objectives: Set<Objective>;
  B: number;
  offset: number;
  detach: boolean;
  attentionRows: number[][];
  itg: ItgTargets;
  norm: Required<LossNormalisers>;
  seed: number;
  activations: boolean;
}

function planStep(config: Blip2Config, inputs: Stage1Inputs, options: Stage1Options): StepPlan {
  checkInputs(config, inputs);
  const B = inputs.inputIds.shape[0];
  const detach = options.detachGathered ?? true;
  if (inputs.gathered && !detach) throw new ModelInputError('detachGathered: false is only defined at world size 1 (no gathered features)');
  const objectives = new Set<Objective>(options.objectives ?? OBJECTIVES);
  if (!objectives.size) throw new ModelInputError('no objective selected: give at least one of itc, itm, itg');
  // A global batch of one sample has nothing to contrast: ITC's softmax over one column is exactly 0 with zero
  // gradient, and ITM has no negative pair to form. Both are left out of the loss (reported as 0; no gradient
  // reaches itm_head); ITG trains as usual.
  const globalRows = inputs.gathered ? inputs.gathered.allTextFeat.shape[0] : B;
  if (globalRows === 1) {
    objectives.delete('itc');
    objectives.delete('itm');
  }
  if (objectives.has('itm') && !inputs.negatives && inputs.gathered) throw new ModelInputError('with gathered features (world size > 1) the ITM negatives must be given');
  const itg = itgTargets(config, inputs.inputIds.arraySync());
  return {
    objectives, B, detach, offset: inputs.gathered?.offset ?? 0, attentionRows: inputs.attentionMask.arraySync(), itg,
    norm: {
      itcRows: inputs.normalisers?.itcRows ?? B,
      itmRows: inputs.normalisers?.itmRows ?? 3 * B,
      itgTokens: inputs.normalisers?.itgTokens ?? itg.targets.length,
    },
    seed: options.seed ?? 0,
    activations: options.activations ?? false,
  };
}

/**
 * Blip2Qformer.forward: the summed loss of the selected objectives, recording what the step hands back.
 *  1. image_embeds = ln_vision(ViT output) for every image the step reads; each image's cross-attention K/V once.
 *  2. The Q-Former passes: all four together (lockstep) when the ITM negatives are known, else one by one below.
 *  3. ITC: query pass → image features, text pass → text feature; similarities to the gathered batch; loss.
 *  4. ITM: hard negatives (given, or drawn from the ITC similarities); the 3B-pair pass; itm_head; loss.
 *  5. ITG: the [DEC] caption against the cached query keys/values, causal; the LM head on target rows; loss.
 */
function stage1Forward(p: Params, config: Blip2Config, inputs: Stage1Inputs, plan: StepPlan, schedule: PassSchedule, record: Recorder): tf.Scalar {
  const { B, objectives } = plan;
  const losses: tf.Scalar[] = [];
  const negs = inputs.negatives;

  // 1. ln_vision over the local batch, then any negatives from elsewhere: [B+K,P,Dv].
  const extra = negs?.negVisionHidden ?? negs?.extraVisionHidden;
  const pool = extra ? (tf.concat([inputs.visionHidden, extra], 0) as tf.Tensor3D) : inputs.visionHidden;
  const imageEmbeds = layerNorm(p, 'vision_model.post_layernorm', pool, config.lavis_config.ln_vision_eps) as tf.Tensor3D; // [B+K,P,Dv]
  const cross = schedule.reuseImageKeyValues ? projectImage(p, config, imageEmbeds) : undefined; // per cross layer [B+K,n,P,d]
  const localImages = (): Map<number, HeadKeyValue> =>
    cross ? selectImages(cross, { begin: 0, size: B }) : projectImage(p, config, imageEmbeds.shape[0] === B ? imageEmbeds : (tf.slice(imageEmbeds, 0, B) as tf.Tensor3D));
  const negImageIndex = negs ? (negs.negImageIndex ?? Array.from({ length: B }, (_, b) => B + b)) : undefined;
  const itmNegatives = (index: number[], ids: tf.Tensor2D, mask: tf.Tensor2D) =>
    itmPass(p, config, { cross, imageEmbeds }, inputs, { negImageIndex: index, negTextIds: ids, negTextMask: mask });

  // 2. All four passes in lockstep, sharing their GEMMs, when the negatives are known up front.
  const lockstep = schedule.lockstep && cross && negs && objectives.size === OBJECTIVES.length && !plan.activations;
  const fused = lockstep
    ? qformerLockstep(p, config, [
      itcQueryPass(p, config, localImages(), B),
      itcTextPass(p, config, inputs.inputIds, plan.attentionRows),
      itmNegatives(negImageIndex!, negs.negTextIds, negs.negTextMask),
      { ...itgPass(p, config, plan.itg.decIds, plan.attentionRows), pastFrom: 0 },
    ]).out
    : undefined;

  // 3. ITC. The gathered side carries no gradient.
  let query: { out: tf.Tensor3D; kv?: KeyValue[] } = { out: fused?.[0] as tf.Tensor3D };
  let textOut = fused?.[1] as tf.Tensor3D;
  if (!fused) {
    const queryPass = itcQueryPass(p, config, localImages(), B, objectives.has('itg')); // ITG reuses its keys/values
    query = qformerEncoder(p, config, queryPass.h, queryPass); // [B,Q,H]
    const textPass = itcTextPass(p, config, inputs.inputIds, plan.attentionRows, plan.activations);
    textOut = qformerEncoder(p, config, textPass.h, textPass).out; // [B,T|1,H]
  }
  const imageFeats = imageFeatures(p, query.out); // [B,Q,E]
  const textFeat = textFeature(p, textOut); // [B,E]
  const allImage = inputs.gathered?.allImageFeats ?? (plan.detach ? (stopGradient(imageFeats) as tf.Tensor3D) : imageFeats);
  const allText = inputs.gathered?.allTextFeat ?? (plan.detach ? (stopGradient(textFeat) as tf.Tensor2D) : textFeat);
  const { simI2t, simT2i } = itcSimilarities(param(p, 'temp'), imageFeats, textFeat, allImage, allText); // [B,N]
  const weights = itmWeights(simI2t, simT2i, plan.offset);
  record.keepAll({ imageFeats, textFeat, simI2t, simT2i, itmWeightsT2i: weights.itmWeightsT2i, itmWeightsI2t: weights.itmWeightsI2t });
  if (objectives.has('itc')) losses.push(record.loss('itc', itcLoss(config, simI2t, simT2i, plan.offset, plan.norm.itcRows)));

  // 4. ITM on 3B pairs: [pos ; (neg image, text) ; (image, neg text)].
  if (objectives.has('itm')) {
    let out = fused?.[2];
    if (!out) {
      let pass;
      if (negs) pass = itmNegatives(negImageIndex!, negs.negTextIds, negs.negTextMask);
      else {
        const w = { t2i: weights.itmWeightsT2i.dataSync() as Float32Array, i2t: weights.itmWeightsI2t.dataSync() as Float32Array };
        const s = sampleHardNegatives(w, B, simI2t.shape[1], { seed: plan.seed, step: 0, rankOffset: plan.offset });
        record.negatives(Array.from(s.negImageIdx), Array.from(s.negTextIdx));
        const idx = tf.tensor1d(s.negTextIdx, 'int32');
        pass = itmNegatives(Array.from(s.negImageIdx), tf.gather(inputs.inputIds, idx) as tf.Tensor2D, tf.gather(inputs.attentionMask, idx) as tf.Tensor2D);
      }
      out = qformerEncoder(p, config, pass.h, pass).out; // [3B,Q,H]
    }
    if (negImageIndex) record.negatives(negImageIndex);
    const itm = itmLoss(p, out, plan.norm.itmRows);
    losses.push(record.loss('itm', itm.loss));
    if (plan.activations) record.keep('itmLogits', itm.logits);
  }

  // 5. ITG: text rows see every query (cached keys/values) and the non-pad text before them.
  if (objectives.has('itg')) {
    const pass = itgPass(p, config, plan.itg.decIds, plan.attentionRows, query.kv);
    const out = fused ? fused[3]! : qformerEncoder(p, config, pass.h, pass).out; // [B,T,H]
    losses.push(record.loss('itg', itgLoss(p, config, out, plan.itg, plan.norm.itgTokens)));
    if (plan.activations) {
      const [, T, H] = out.shape;
      record.keep('itgLogits', tf.reshape(lmHead(p, config, tf.reshape(out, [B * T, H]) as tf.Tensor2D), [B, T, config.qformer_config.vocab_size]));
    }
  }

  if (plan.activations) {
    record.keep('imageEmbeds', imageEmbeds.shape[0] === B ? imageEmbeds : tf.slice(imageEmbeds, 0, B));
    record.keep('queryOutput', query.out);
    record.keep('textLastHiddenState', textOut);
  }
  // No objective left (ITC alone on a one-sample batch): a zero that still depends on the parameters.
  return (losses.length ? tf.addN(losses) : tf.mul(tf.sum(imageFeats), 0)) as tf.Scalar;
}

/** Gradients of the forward's loss w.r.t. the trainable parameters (and the gathered features when asked). */
function differentiate(params: Params, config: Blip2Config, inputs: Stage1Inputs, options: Stage1Options, forward: (p: Params) => tf.Scalar) {
  const grads = new Map<string, tf.Tensor>();
  if (!(options.grads ?? true)) return { total: tf.tidy(() => forward(params)), grads, gatheredGrads: undefined };
  const names = options.trainable ?? trainableNames(config, 1);
  const xs = names.map((n) => param(params, n));
  if (options.gatheredGrads) {
    if (!inputs.gathered) throw new ModelInputError('gatheredGrads needs inputs.gathered');
    xs.push(inputs.gathered.allImageFeats, inputs.gathered.allTextFeat);
  }
  // Parameters that the selected objectives do not reach (e.g. itm_head under ITC alone) get zero gradients.
  // `gradients` frees activations and intermediate gradients during backward (trainer/engine/gradients.ts).
  const r = gradients(() => forward(params), xs);
  names.forEach((n, i) => grads.set(n, r.grads[i] ?? tf.zerosLike(xs[i]!)));
  const n = names.length;
  const gatheredGrads = options.gatheredGrads
    ? { allImageFeats: (r.grads[n] ?? tf.zerosLike(xs[n]!)) as tf.Tensor3D, allTextFeat: (r.grads[n + 1] ?? tf.zerosLike(xs[n + 1]!)) as tf.Tensor2D }
    : undefined;
  return { total: r.value as tf.Scalar, grads, gatheredGrads };
}

const GATHERED = ['imageFeats', 'textFeat', 'simI2t', 'simT2i', 'itmWeightsT2i', 'itmWeightsI2t'] as const;

/** What the forward pass records for the result: kept tensors, per-objective losses, the negatives used. */
class Recorder {
  private kept = new Map<string, tf.Tensor>();
  private lossTensors = new Map<Objective, tf.Scalar>();
  private negImageIndex?: number[];
  private negTextIndex?: number[];

  keep(name: string, t: tf.Tensor): void {
    this.kept.set(name, tf.keep(t));
  }

  keepAll(tensors: Record<string, tf.Tensor>): void {
    for (const [name, t] of Object.entries(tensors)) this.keep(name, t);
  }

  loss(objective: Objective, t: tf.Scalar): tf.Scalar {
    this.lossTensors.set(objective, tf.keep(t));
    return t;
  }

  negatives(image: number[], text?: number[]): void {
    this.negImageIndex = image;
    if (text) this.negTextIndex = text;
  }

  result(total: tf.Scalar, grads: Map<string, tf.Tensor>, gatheredGrads: Stage1Result['gatheredGrads']): Stage1Result {
    const num = (o: Objective) => this.lossTensors.get(o)?.dataSync()[0] ?? 0;
    const losses = { itc: num('itc'), itm: num('itm'), itg: num('itg'), total: total.dataSync()[0]! };
    total.dispose();
    for (const t of this.lossTensors.values()) t.dispose();
    const kept = this.kept;
    const activations = new Map([...kept].filter(([k]) => !(GATHERED as readonly string[]).includes(k)));
    return {
      losses,
      grads,
      imageFeats: kept.get('imageFeats') as tf.Tensor3D,
      textFeat: kept.get('textFeat') as tf.Tensor2D,
      simI2t: kept.get('simI2t') as tf.Tensor2D,
      simT2i: kept.get('simT2i') as tf.Tensor2D,
      itmWeightsT2i: kept.get('itmWeightsT2i') as tf.Tensor2D,
      itmWeightsI2t: kept.get('itmWeightsI2t') as tf.Tensor2D,
      negImageIndex: this.negImageIndex,
      negTextIndex: this.negTextIndex,
      gatheredGrads,
      activations,
      dispose() {
        for (const t of kept.values()) t.dispose();
        for (const t of grads.values()) t.dispose();
        gatheredGrads?.allImageFeats.dispose();
        gatheredGrads?.allTextFeat.dispose();
      },
    };
  }
}

function checkInputs(config: Blip2Config, inputs: Stage1Inputs): void {
  const shape = (t: tf.Tensor) => JSON.stringify(t.shape);
  const [b, P, Dv] = inputs.visionHidden.shape;
  if (Dv !== config.vision_config.hidden_size) throw new ModelInputError(`visionHidden width ${Dv} != vision hidden_size ${config.vision_config.hidden_size}`);
  const [bi, t] = inputs.inputIds.shape;
  if (bi !== b) throw new ModelInputError(`inputIds batch ${bi} != visionHidden batch ${b}`);
  if (inputs.attentionMask.shape[0] !== b || inputs.attentionMask.shape[1] !== t) throw new ModelInputError(`attentionMask shape ${shape(inputs.attentionMask)} != inputIds shape [${b}, ${t}]`);
  const n = inputs.negatives;
  if (!n) return;
  if (n.negVisionHidden && n.negImageIndex) throw new ModelInputError('give either negVisionHidden or negImageIndex, not both');
  if (!n.negVisionHidden && !n.negImageIndex) throw new ModelInputError('ITM negatives need negVisionHidden or negImageIndex');
  if (n.negVisionHidden && shape(n.negVisionHidden) !== JSON.stringify([b, P, Dv])) throw new ModelInputError(`negVisionHidden shape ${shape(n.negVisionHidden)} != [${b}, ${P}, ${Dv}]`);
  const pool = b + (n.extraVisionHidden?.shape[0] ?? 0);
  if (n.negImageIndex && (n.negImageIndex.length !== b || n.negImageIndex.some((i) => !Number.isInteger(i) || i < 0 || i >= pool))) {
    throw new ModelInputError(`negImageIndex ${JSON.stringify(n.negImageIndex)} must hold ${b} rows of the image pool of ${pool}`);
  }
  if (n.negTextIds.shape[0] !== b || n.negTextIds.shape[1] !== t) throw new ModelInputError(`negTextIds shape ${shape(n.negTextIds)} != [${b}, ${t}]`);
}
