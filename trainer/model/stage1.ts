/**
 * Stage-1 pre-training step (LAVIS blip2_qformer.py Blip2Qformer.forward): ITC + ITM + ITG on the Q-Former, with
 * gradients of the summed loss w.r.t. the trainable parameters only.
 *
 * Work the original repeats and this step does not (the numbers are the same):
 * - each image's cross-attention keys/values are projected once per cross layer and gathered for the ITC query
 *   pass and ITM's three groups (LAVIS projects the positive image three times and the negative once more);
 * - all cross layers' key/value projections run as one matmul;
 * - ITG's text rows attend to the query keys/values cached from the ITC query pass (as LAVIS does with
 *   past_key_values), and its LM head only runs on rows that have a target.
 */
import { hasCrossAttention, trainableNames, type Blip2Config } from './config';
import { mulberry32 } from '../../common';
import { tf } from '../engine';
import { gradients } from '../engine';
import { crossEntropySum, l2normalize, layerNorm, linear, param, stopGradient } from './layers';
import type { Params } from './params';
import { itcQueryMask, itcTextMask, itgMask, itmMask, maskRows, type AttentionMask } from './masks';
import { additiveMask, embeddings, lmHead, projectImage, qformerEncoder, qformerLockstep, queryTokens, selectImages, type HeadKeyValue, type KeyValue } from './qformer';

export type Objective = 'itc' | 'itm' | 'itg';

/** ITC features of every rank, concatenated in rank order (detached: no gradient flows back into them). */
export interface GatheredFeatures {
  /** [N,Q,E] l2-normalised image features of all ranks. */
  allImageFeats: tf.Tensor3D;
  /** [N,E] l2-normalised text features of all ranks. */
  allTextFeat: tf.Tensor2D;
  /** Row of this rank's first sample in the gathered rows (= sum of the batch sizes of lower ranks). */
  offset: number;
}

/** ITM negatives for the local batch. Give either `negVisionHidden`, or `negImageIndex` (+ `extraVisionHidden`). */
export interface ItmNegatives {
  /** [B,P,Dv] the pre-ln_vision hidden state of the negative image of each local text (may come from another rank). */
  negVisionHidden?: tf.Tensor3D;
  /**
   * For each local text, the row of its negative image in `[visionHidden ; extraVisionHidden]`. Local negatives
   * given this way reuse the cross-attention keys/values already projected for the query pass.
   */
  negImageIndex?: number[];
  /** [K,P,Dv] images referred to by `negImageIndex` values ≥ B. */
  extraVisionHidden?: tf.Tensor3D;
  /** [B,T] int32 token ids of the negative text of each local image ([CLS] kept). */
  negTextIds: tf.Tensor2D;
  /** [B,T] int32 attention mask of the negative texts. */
  negTextMask: tf.Tensor2D;
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
  /** ITM negatives; absent = sampled here from the ITM weights with `options.seed` (world size 1 only). */
  negatives?: ItmNegatives;
  normalisers?: LossNormalisers;
}

export interface Stage1Options {
  /** Objectives in the loss; default all three. */
  objectives?: Objective[];
  /** Seed of the hard-negative sampler when `inputs.negatives` is absent; default 0. */
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
  /**
   * Reuse each image's cross-attention keys/values across the ITC query pass and ITM's groups; default true.
   * false recomputes them per pass and per ITM row as LAVIS does (same numbers, more work; the benchmark baseline).
   */
  reuseImageKeyValues?: boolean;
  /**
   * Run the four passes (ITC query and text, ITM, ITG) layer by layer together, sharing GEMMs (`qformerLockstep`);
   * default true. Applies when the ITM negatives are given, image keys/values are reused, all objectives are on
   * and no activations are asked for; otherwise the passes run one after another. Same arithmetic either way.
   */
  lockstep?: boolean;
}

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
  /** Golden-named activations when asked (`image_embeds`, `query_output`, `itm_logits`, `itg_logits`, ...). */
  activations: Map<string, tf.Tensor>;
  /** Release every tensor in this result. */
  dispose(): void;
}

/** 0/1 mask [B,Sq,Sk] -> additive [B,1,Sq,Sk]; undefined when nothing is masked (adding zeros changes nothing). */
export function maskTensor(mask: AttentionMask): tf.Tensor4D | undefined {
  if (mask.data.every((v) => v === 1)) return undefined;
  return tf.tidy(() => additiveMask(tf.tensor3d(mask.data, mask.shape, 'int32')));
}

/** The ITC query pass's input: the query tokens, embedded ([B,Q,H]), and its mask (all ones: none). */
function queryPassInput(p: Params, config: Blip2Config, batch: number) {
  return { h: embeddings(p, config, queryTokens(p, batch)), selfMask: maskTensor(itcQueryMask(batch, config.qformer.num_query_tokens)) };
}

/** l2norm(vision_projection(Z)): [B,Q,H] -> [B,Q,E]. */
function imageFeatsOf(p: Params, queryOutput: tf.Tensor3D): tf.Tensor3D {
  return l2normalize(linear(p, 'vision_projection', queryOutput)) as tf.Tensor3D;
}

/** l2norm(text_projection([CLS] output)): [B,T|1,H] -> [B,E]. */
function textFeatOf(p: Params, textOutput: tf.Tensor3D): tf.Tensor2D {
  const [b, , H] = textOutput.shape;
  const cls = tf.reshape(tf.slice(textOutput, [0, 0, 0], [b, 1, H]), [b, H]); // [B,H]
  return l2normalize(linear(p, 'text_projection', cls)) as tf.Tensor2D; // [B,E]
}

/** Image side of ITC: query-only pass (all-ones mask), then l2norm(vision_projection(Z)). */
function queryPass(p: Params, config: Blip2Config, cross: Map<number, HeadKeyValue>, batch: number) {
  const { h, selfMask } = queryPassInput(p, config, batch);
  const enc = qformerEncoder(p, config, h, { queryLength: config.qformer.num_query_tokens, cross, selfMask }); // [B,Q,H]
  return { queryOutput: enc.out, kv: enc.kv, imageFeats: imageFeatsOf(p, enc.out) };
}

/** Text side of ITC: text-only bidirectional pass, pads masked; l2norm(text_projection([CLS] output)). */
function textPass(p: Params, config: Blip2Config, inputIds: tf.Tensor2D, attentionMask: number[][], allRows = false) {
  const h = embeddings(p, config, undefined, inputIds); // [B,T,H]
  // Only the [CLS] row of the last layer is read (unless all rows are asked for, as activations).
  const enc = qformerEncoder(p, config, h, { queryLength: 0, selfMask: maskTensor(itcTextMask(attentionMask)), lastLayerRows: allRows ? undefined : 1 }); // [B,T|1,H]
  return { textOutput: enc.out, textFeat: textFeatOf(p, enc.out) };
}

/**
 * sim_i2t[i,j] = max_q <image_feats[i,q], text_all[j]> / temp; sim_t2i[i,j] = max_q <text_feat[i], image_all[j,q]> / temp.
 * imageFeats [B,Q,E], textFeat [B,E], allImageFeats [N,Q,E], allTextFeat [N,E] -> [B,N] each.
 */
export function itcSimilarities(temp: tf.Tensor, imageFeats: tf.Tensor3D, textFeat: tf.Tensor2D, allImageFeats: tf.Tensor3D, allTextFeat: tf.Tensor2D) {
  const [b, Q, E] = imageFeats.shape;
  const n = allTextFeat.shape[0];
  const i2t = tf.reshape(tf.matMul(tf.reshape(imageFeats, [b * Q, E]), allTextFeat, false, true), [b, Q, n]); // [B,Q,N]
  const simI2t = tf.div(tf.max(i2t, 1), temp) as tf.Tensor2D; // [B,N]
  const t2i = tf.reshape(tf.matMul(textFeat, tf.reshape(allImageFeats, [n * Q, E]), false, true), [b, n, Q]); // [B,N,Q]
  const simT2i = tf.div(tf.max(t2i, 2), temp) as tf.Tensor2D; // [B,N]
  return { simI2t, simT2i };
}

/** Hard-negative distributions: softmax over columns with each row's positive (column offset+i) set to -10000. */
export function itmWeights(simI2t: tf.Tensor2D, simT2i: tf.Tensor2D, offset: number) {
  return tf.tidy(() => {
    const [b, n] = simI2t.shape;
    const pos = tf.cast(tf.oneHot(tf.range(offset, offset + b, 1, 'int32') as tf.Tensor1D, n), 'bool'); // [B,N]
    const fill = tf.fill([b, n], -10000);
    return {
      itmWeightsT2i: tf.softmax(tf.where(pos, fill, simT2i)) as tf.Tensor2D,
      itmWeightsI2t: tf.softmax(tf.where(pos, fill, simI2t)) as tf.Tensor2D,
    };
  });
}

/**
 * ITG target tokens of a batch (labels ≠ -100 after the shift: every non-pad token after the first), i.e. the local
 * `itgTokens` count; all-reduce it to get the global normaliser.
 */
export function itgTargetCount(config: Blip2Config, inputIds: number[][]): number {
  return inputIds.reduce((n, row) => n + row.slice(1).filter((v) => v !== config.qformer.pad_token_id).length, 0);
}

/** Deterministic PRNG (mulberry32) for the negative sampler. */
export { mulberry32 };

/**
 * torch.multinomial(weights[b], 1) for each row, seeded: negImage[b] from weightsT2i[b] (a negative image for text b),
 * negText[b] from weightsI2t[b] (a negative text for image b). Indices are columns of the gathered batch.
 */
export function sampleHardNegatives(weightsT2i: number[][], weightsI2t: number[][], seed: number): { negImageIdx: number[]; negTextIdx: number[] } {
  const rand = mulberry32(seed);
  const draw = (row: number[]) => {
    const total = row.reduce((a, b) => a + b, 0);
    let u = rand() * total;
    for (let j = 0; j < row.length; j++) {
      u -= row[j]!;
      if (u < 0 && row[j]! > 0) return j;
    }
    for (let j = row.length - 1; j >= 0; j--) if (row[j]! > 0) return j;
    throw new Error('hard-negative weights are all zero');
  };
  return { negImageIdx: weightsT2i.map(draw), negTextIdx: weightsI2t.map(draw) };
}

/** Negatives taken from the local batch by index (the golden case, or world size 1). */
export function localNegatives(inputs: Pick<Stage1Inputs, 'inputIds' | 'attentionMask'>, negImageIdx: number[], negTextIdx: number[]): ItmNegatives {
  const b = inputs.inputIds.shape[0];
  for (const i of [...negImageIdx, ...negTextIdx]) {
    if (!Number.isInteger(i) || i < 0 || i >= b) throw new RangeError(`negative index ${i} is not a row of the local batch of ${b}`);
  }
  return tf.tidy(() => {
    const idx = tf.tensor1d(negTextIdx, 'int32');
    return {
      negImageIndex: [...negImageIdx],
      negTextIds: tf.keep(tf.gather(inputs.inputIds, idx) as tf.Tensor2D),
      negTextMask: tf.keep(tf.gather(inputs.attentionMask, idx) as tf.Tensor2D),
    };
  });
}

/** ITC features of the local batch without gradients (what a rank all-gathers before its step). */
export function stage1Features(params: Params, config: Blip2Config, inputs: Pick<Stage1Inputs, 'visionHidden' | 'inputIds' | 'attentionMask'>): { imageFeats: tf.Tensor3D; textFeat: tf.Tensor2D } {
  return tf.tidy(() => {
    const b = inputs.visionHidden.shape[0];
    const embeds = layerNorm(params, 'vision_model.post_layernorm', inputs.visionHidden, config.vision.ln_vision_eps) as tf.Tensor3D;
    const { imageFeats } = queryPass(params, config, projectImage(params, config, embeds), b);
    const { textFeat } = textPass(params, config, inputs.inputIds, inputs.attentionMask.arraySync());
    return { imageFeats, textFeat };
  });
}

function checkInputs(config: Blip2Config, inputs: Stage1Inputs): void {
  const [b, P, Dv] = inputs.visionHidden.shape;
  if (Dv !== config.vision.hidden_size) throw new Error(`visionHidden width ${Dv} != vision hidden_size ${config.vision.hidden_size}`);
  const [bi, t] = inputs.inputIds.shape;
  if (bi !== b) throw new Error(`inputIds batch ${bi} != visionHidden batch ${b}`);
  if (inputs.attentionMask.shape[0] !== b || inputs.attentionMask.shape[1] !== t) throw new Error(`attentionMask shape ${JSON.stringify(inputs.attentionMask.shape)} != inputIds shape [${b}, ${t}]`);
  const n = inputs.negatives;
  if (n) {
    if (n.negVisionHidden && n.negImageIndex) throw new Error('give either negVisionHidden or negImageIndex, not both');
    if (n.negVisionHidden && JSON.stringify(n.negVisionHidden.shape) !== JSON.stringify([b, P, Dv])) throw new Error(`negVisionHidden shape ${JSON.stringify(n.negVisionHidden.shape)} != [${b}, ${P}, ${Dv}]`);
    const pool = b + (n.extraVisionHidden?.shape[0] ?? 0);
    if (n.negImageIndex && (n.negImageIndex.length !== b || n.negImageIndex.some((i) => !Number.isInteger(i) || i < 0 || i >= pool))) {
      throw new Error(`negImageIndex ${JSON.stringify(n.negImageIndex)} must hold ${b} rows of the image pool of ${pool}`);
    }
    if (!n.negVisionHidden && !n.negImageIndex) throw new Error('ITM negatives need negVisionHidden or negImageIndex');
    if (n.negTextIds.shape[0] !== b || n.negTextIds.shape[1] !== t) throw new Error(`negTextIds shape ${JSON.stringify(n.negTextIds.shape)} != [${b}, ${t}]`);
  }
}

/**
 * One stage-1 step: losses, their gradients w.r.t. the trainable parameters, and what the distributed trainer needs
 * (features for gathering, ITM sampling weights).
 */
export function stage1Step(params: Params, config: Blip2Config, inputs: Stage1Inputs, options: Stage1Options = {}): Stage1Result {
  checkInputs(config, inputs);
  const q = config.qformer;
  const Q = q.num_query_tokens;
  const H = q.hidden_size;
  const objectives = new Set<Objective>(options.objectives ?? ['itc', 'itm', 'itg']);
  const [B, T] = inputs.inputIds.shape;
  const offset = inputs.gathered?.offset ?? 0;
  const detach = options.detachGathered ?? true;
  if (inputs.gathered && !detach) throw new Error('detachGathered: false is only defined at world size 1 (no gathered features)');
  const idRows = inputs.inputIds.arraySync();
  const attentionRows = inputs.attentionMask.arraySync();

  // ITG targets: [DEC] replaces [CLS]; labels = dec ids with pads -> -100, shifted by one.
  const decIds = idRows.map((row) => row.map((v, j) => (j === 0 ? q.dec_token_id : v)));
  const itgRowIndex: number[] = [];
  const itgTargets: number[] = [];
  decIds.forEach((row, b) => {
    for (let t = 0; t + 1 < T; t++) {
      if (row[t + 1] !== q.pad_token_id) {
        itgRowIndex.push(b * T + t);
        itgTargets.push(row[t + 1]!);
      }
    }
  });
  const norm = {
    itcRows: inputs.normalisers?.itcRows ?? B,
    itmRows: inputs.normalisers?.itmRows ?? 3 * B,
    itgTokens: inputs.normalisers?.itgTokens ?? itgTargets.length,
  };

  const kept = new Map<string, tf.Tensor>();
  const keep = (name: string, t: tf.Tensor) => kept.set(name, tf.keep(t));
  const lossTensors: Partial<Record<Objective, tf.Scalar>> = {};
  let negImageIndex: number[] | undefined;
  let negTextIndex: number[] | undefined;

  const forward = (p: Params): tf.Scalar => {
    // ln_vision over every image this step reads: the local batch, then any negatives from elsewhere.
    const negs = inputs.negatives;
    const extra = negs?.negVisionHidden ?? negs?.extraVisionHidden;
    const pool = extra ? (tf.concat([inputs.visionHidden, extra], 0) as tf.Tensor3D) : inputs.visionHidden; // [B+K,P,Dv]
    const imageEmbeds = layerNorm(p, 'vision_model.post_layernorm', pool, config.vision.ln_vision_eps) as tf.Tensor3D; // [B+K,P,Dv]
    const reuse = options.reuseImageKeyValues ?? true;
    const cross = reuse ? projectImage(p, config, imageEmbeds) : undefined; // per cross layer [B+K,P,H]
    const localEmbeds = () => (imageEmbeds.shape[0] === B ? imageEmbeds : (tf.slice(imageEmbeds, 0, B) as tf.Tensor3D));

    // With the negatives known up front, all four passes advance through the layers together (qformerLockstep);
    // otherwise (negatives sampled from this step's ITC weights, activations asked for, the recompute baseline,
    // a subset of objectives) they run one after another.
    const positives = Array.from({ length: B }, (_, b) => b);
    const decTensor = tf.tensor2d(decIds, [B, T], 'int32');
    const itgSelfMask = () => maskTensor(maskRows(itgMask(attentionRows, Q), Q, Q + T)); // text rows [B,1,T,Q+T]
    const itmInput = (negImage: number[], negIds: tf.Tensor2D, negMask: tf.Tensor2D) => {
      const imageRows = tf.tensor1d([...positives, ...negImage, ...positives], 'int32');
      const ids3 = tf.concat([inputs.inputIds, inputs.inputIds, negIds], 0) as tf.Tensor2D; // [3B,T]
      const mask3 = tf.concat([inputs.attentionMask, inputs.attentionMask, negMask], 0) as tf.Tensor2D; // [3B,T]
      return {
        h: embeddings(p, config, queryTokens(p, 3 * B), ids3), // [3B,Q+T,H]
        selfMask: maskTensor(itmMask(mask3.arraySync(), Q)), // [3B,1,Q+T,Q+T]
        cross: cross ? selectImages(cross, imageRows) : projectImage(p, config, tf.gather(imageEmbeds, imageRows) as tf.Tensor3D),
      };
    };
    let lockstep: { itmOut: tf.Tensor3D; itgOut: tf.Tensor3D } | undefined;
    let qp: { queryOutput: tf.Tensor3D; kv?: KeyValue[]; imageFeats: tf.Tensor3D };
    let tp: { textOutput: tf.Tensor3D; textFeat: tf.Tensor2D };
    if ((options.lockstep ?? true) && cross && negs && objectives.size === 3 && !options.activations) {
      negImageIndex = negs.negImageIndex ?? Array.from({ length: B }, (_, b) => B + b);
      const itcQuery = queryPassInput(p, config, B);
      const itm = itmInput(negImageIndex, negs.negTextIds, negs.negTextMask);
      const [queryOutput, textOutput, itmOut, itgOut] = qformerLockstep(p, config, [
        { h: itcQuery.h, queryLength: Q, selfMask: itcQuery.selfMask, cross: selectImages(cross, { begin: 0, size: B }) },
        { h: embeddings(p, config, undefined, inputs.inputIds), queryLength: 0, selfMask: maskTensor(itcTextMask(attentionRows)), lastLayerRows: 1 },
        { h: itm.h, queryLength: Q, selfMask: itm.selfMask, cross: itm.cross, lastLayerRows: Q },
        { h: embeddings(p, config, undefined, decTensor), queryLength: 0, selfMask: itgSelfMask(), pastFrom: 0 },
      ]).out as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
      qp = { queryOutput, imageFeats: imageFeatsOf(p, queryOutput) };
      tp = { textOutput, textFeat: textFeatOf(p, textOutput) };
      lockstep = { itmOut, itgOut };
    } else {
      qp = queryPass(p, config, cross ? selectImages(cross, { begin: 0, size: B }) : projectImage(p, config, localEmbeds()), B);
      tp = textPass(p, config, inputs.inputIds, attentionRows, options.activations);
    }
    keep('imageFeats', qp.imageFeats);
    keep('textFeat', tp.textFeat);

    // ITC: the gathered side carries no gradient.
    const temp = param(p, 'temp');
    const allImage = inputs.gathered?.allImageFeats ?? (detach ? (stopGradient(qp.imageFeats) as tf.Tensor3D) : qp.imageFeats);
    const allText = inputs.gathered?.allTextFeat ?? (detach ? (stopGradient(tp.textFeat) as tf.Tensor2D) : tp.textFeat);
    const { simI2t, simT2i } = itcSimilarities(temp, qp.imageFeats, tp.textFeat, allImage, allText); // [B,N]
    keep('simI2t', simI2t);
    keep('simT2i', simT2i);
    const w = itmWeights(simI2t, simT2i, offset);
    keep('itmWeightsT2i', w.itmWeightsT2i);
    keep('itmWeightsI2t', w.itmWeightsI2t);
    if (objectives.has('itc')) {
      const targets = tf.range(offset, offset + B, 1, 'int32') as tf.Tensor1D;
      const sum = tf.add(crossEntropySum(simI2t, targets, q.itc_label_smoothing), crossEntropySum(simT2i, targets, q.itc_label_smoothing));
      lossTensors.itc = tf.div(sum, 2 * norm.itcRows) as tf.Scalar;
    }

    if (objectives.has('itm')) {
      // Negatives: given, or sampled here from the ITM weights (world size 1).
      let negIds: tf.Tensor2D;
      let negMask: tf.Tensor2D;
      if (negs) {
        negImageIndex = negs.negImageIndex ?? Array.from({ length: B }, (_, b) => B + b);
        negIds = negs.negTextIds;
        negMask = negs.negTextMask;
      } else {
        if (inputs.gathered) throw new Error('with gathered features (world size > 1) the ITM negatives must be given');
        const s = sampleHardNegatives(w.itmWeightsT2i.arraySync(), w.itmWeightsI2t.arraySync(), options.seed ?? 0);
        negImageIndex = s.negImageIdx;
        negTextIndex = s.negTextIdx;
        const idx = tf.tensor1d(s.negTextIdx, 'int32');
        negIds = tf.gather(inputs.inputIds, idx) as tf.Tensor2D;
        negMask = tf.gather(inputs.attentionMask, idx) as tf.Tensor2D;
      }
      // 3B pairs: texts [pos ; pos ; neg], images [pos ; neg ; pos]; each image's keys/values are reused.
      // Only the query rows of the last layer are read.
      let queryOut: tf.Tensor3D;
      if (lockstep) queryOut = lockstep.itmOut;
      else {
        const itm = itmInput(negImageIndex, negIds, negMask);
        queryOut = qformerEncoder(p, config, itm.h, { queryLength: Q, selfMask: itm.selfMask, cross: itm.cross, lastLayerRows: Q }).out; // [3B,Q,H]
      }
      const logits = tf.mean(linear(p, 'itm_head', queryOut), 1) as tf.Tensor2D; // [3B,2]
      keep('itmLogits', logits);
      const labels = tf.tensor1d([...positives.map(() => 1), ...positives.map(() => 0), ...positives.map(() => 0)], 'int32');
      lossTensors.itm = tf.div(crossEntropySum(logits, labels, 0), norm.itmRows) as tf.Scalar;
    }

    if (objectives.has('itg')) {
      // Text rows attend to the cached query keys/values (all visible) and to causal, non-pad text.
      const out = lockstep ? lockstep.itgOut : qformerEncoder(p, config, embeddings(p, config, undefined, decTensor), { queryLength: 0, selfMask: itgSelfMask(), past: qp.kv }).out; // [B,T,H]
      const flat = tf.reshape(out, [B * T, H]) as tf.Tensor2D;
      if (itgTargets.length) {
        const rows = tf.gather(flat, tf.tensor1d(itgRowIndex, 'int32')) as tf.Tensor2D; // [M,H]
        const logits = lmHead(p, config, rows); // [M,V]
        const sum = crossEntropySum(logits, tf.tensor1d(itgTargets, 'int32'), q.itg_label_smoothing);
        lossTensors.itg = tf.div(sum, Math.max(norm.itgTokens, 1)) as tf.Scalar;
      } else {
        lossTensors.itg = tf.mul(tf.sum(flat), 0) as tf.Scalar;
      }
      if (options.activations) keep('itgLogits', tf.reshape(lmHead(p, config, flat), [B, T, q.vocab_size]));
    }

    if (options.activations) {
      keep('imageEmbeds', localEmbeds());
      keep('queryOutput', qp.queryOutput);
      keep('textLastHiddenState', tp.textOutput);
    }
    for (const o of Object.keys(lossTensors) as Objective[]) keep(`loss.${o}`, lossTensors[o]!);
    const parts = Object.values(lossTensors);
    if (!parts.length) throw new Error('no objective selected');
    return tf.addN(parts) as tf.Scalar;
  };

  const grads = new Map<string, tf.Tensor>();
  let gatheredGrads: Stage1Result['gatheredGrads'];
  let totalTensor: tf.Scalar;
  if (options.grads ?? true) {
    const names = options.trainable ?? trainableNames(config, 1);
    const xs = names.map((n) => param(params, n));
    if (options.gatheredGrads) {
      if (!inputs.gathered) throw new Error('gatheredGrads needs inputs.gathered');
      xs.push(inputs.gathered.allImageFeats, inputs.gathered.allTextFeat);
    }
    // Parameters that the selected objectives do not reach (e.g. itm_head under ITC alone) get zero gradients.
    // `gradients` frees activations and intermediate gradients during backward (./engine/gradients.ts).
    const r = gradients(() => forward(params), xs);
    totalTensor = r.value as tf.Scalar;
    names.forEach((n, i) => grads.set(n, r.grads[i] ?? tf.zerosLike(xs[i]!)));
    if (options.gatheredGrads) {
      const n = names.length;
      gatheredGrads = {
        allImageFeats: (r.grads[n] ?? tf.zerosLike(xs[n]!)) as tf.Tensor3D,
        allTextFeat: (r.grads[n + 1] ?? tf.zerosLike(xs[n + 1]!)) as tf.Tensor2D,
      };
    }
  } else {
    totalTensor = tf.tidy(() => forward(params));
  }
  const num = (o: Objective) => (kept.has(`loss.${o}`) ? kept.get(`loss.${o}`)!.dataSync()[0]! : 0);
  const losses = { itc: num('itc'), itm: num('itm'), itg: num('itg'), total: totalTensor.dataSync()[0]! };
  totalTensor.dispose();
  for (const o of ['itc', 'itm', 'itg']) {
    kept.get(`loss.${o}`)?.dispose();
    kept.delete(`loss.${o}`);
  }
  const activations = new Map<string, tf.Tensor>();
  for (const [k, t] of kept) if (!['imageFeats', 'textFeat', 'simI2t', 'simT2i', 'itmWeightsT2i', 'itmWeightsI2t'].includes(k)) activations.set(k, t);
  const result: Stage1Result = {
    losses,
    grads,
    imageFeats: kept.get('imageFeats') as tf.Tensor3D,
    textFeat: kept.get('textFeat') as tf.Tensor2D,
    simI2t: kept.get('simI2t') as tf.Tensor2D,
    simT2i: kept.get('simT2i') as tf.Tensor2D,
    itmWeightsT2i: kept.get('itmWeightsT2i') as tf.Tensor2D,
    itmWeightsI2t: kept.get('itmWeightsI2t') as tf.Tensor2D,
    negImageIndex,
    negTextIndex,
    gatheredGrads,
    activations,
    dispose() {
      for (const t of kept.values()) t.dispose();
      for (const t of grads.values()) t.dispose();
      gatheredGrads?.allImageFeats.dispose();
      gatheredGrads?.allTextFeat.dispose();
    },
  };
  return result;
}

/** Layers of the Q-Former that cross-attend (for reports and tests). */
export function crossAttentionLayers(config: Blip2Config): number[] {
  return Array.from({ length: config.qformer.num_layers }, (_, i) => i).filter((i) => hasCrossAttention(config.qformer, i));
}

/** ln_vision (= `vision_model.post_layernorm`): visionHidden [B,P,Dv] -> image_embeds [B,P,Dv]. */
export function lnVision(params: Params, config: Blip2Config, visionHidden: tf.Tensor3D): tf.Tensor3D {
  return tf.tidy(() => layerNorm(params, 'vision_model.post_layernorm', visionHidden, config.vision.ln_vision_eps) as tf.Tensor3D);
}

/**
 * Backward of the ITC features alone: gradients w.r.t. the trainable parameters of
 * Σ imageFeats·dImageFeats + Σ textFeat·dTextFeat, i.e. the upstream gradients `dImageFeats` [B,Q,E] and
 * `dTextFeat` [B,E] pushed through this rank's feature computation. With the gathered-feature gradients of all ranks
 * summed and sliced to this rank, adding these to `stage1Step`'s grads gives the gradient of gathering that passes
 * gradients back (golden `grad_full`), instead of LAVIS's detached gathering.
 */
export function stage1FeatureBackward(
  params: Params,
  config: Blip2Config,
  inputs: Pick<Stage1Inputs, 'visionHidden' | 'inputIds' | 'attentionMask'>,
  upstream: { imageFeats: tf.Tensor3D; textFeat: tf.Tensor2D },
  trainable: string[] = trainableNames(config, 1),
): Map<string, tf.Tensor> {
  const xs = trainable.map((n) => param(params, n));
  const attentionRows = inputs.attentionMask.arraySync();
  const r = gradients(
    () => {
      const b = inputs.visionHidden.shape[0];
      const embeds = layerNorm(params, 'vision_model.post_layernorm', inputs.visionHidden, config.vision.ln_vision_eps) as tf.Tensor3D;
      const { imageFeats } = queryPass(params, config, projectImage(params, config, embeds), b);
      const { textFeat } = textPass(params, config, inputs.inputIds, attentionRows);
      return tf.add(tf.sum(tf.mul(imageFeats, upstream.imageFeats)), tf.sum(tf.mul(textFeat, upstream.textFeat))) as tf.Scalar;
    },
    xs,
  );
  r.value.dispose();
  const out = new Map<string, tf.Tensor>();
  trainable.forEach((n, i) => out.set(n, r.grads[i] ?? tf.zerosLike(xs[i]!)));
  return out;
}
