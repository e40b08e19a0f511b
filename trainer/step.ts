/**
 * The synchronous data-parallel stage-1 step, as BLIP-2 runs it under torch.distributed
 * (LAVIS lavis/models/blip2_models/blip2_qformer.py `Blip2Qformer.forward`, see ../shared/docs/blip2-spec.md §5),
 * over any number of ranks holding batches of different sizes:
 *
 *  1. Features (no gradient): every rank computes its image features [b, Q, E] and text features [b, E].
 *  2. All-gather (variable-sized blocks) of features, token ids and masks: every rank sees the global batch's
 *     features (ITC's `concat_all_gather`) and texts (ITM's `text_ids_world`). Rank r's rows start at
 *     `rankOffset = Σ_{s<r} b_s`.
 *  3. ITM hard negatives over the GLOBAL batch: for each local text a negative image, for each local image a
 *     negative text, drawn from softmax(sim / temp) with the positive set to −10000 (spec §5.2). Draws come from a
 *     counter-based generator keyed by (seed, step, global row), so they do not depend on the world shape; fixed
 *     negatives can be given instead (tests).
 *  4. Fetch negatives that live on other ranks: the requested global rows are all-gathered, then each rank sends
 *     the pre-`ln_vision` hidden states of its rows that anyone asked for (only those); local negatives are reused. The model applies
 *     `ln_vision` locally to them, so the gradient w.r.t. `ln_vision` of a negative image is computed where it is
 *     used and summed by the all-reduce, the same as LAVIS's `all_gather_with_grad` sending it back to its owner
 *     (the ViT is frozen, so nothing flows further).
 *  5. Loss and gradients on the local rows, each objective's sum divided by its GLOBAL count (ITC rows B, ITM rows
 *     3B, ITG target tokens over the global batch), gathered features detached (LAVIS: gathered copies carry no
 *     gradient).
 *  6. All-reduce SUM of the gradients (and the three local loss terms, in the same buffer): the result is the
 *     single-process gradient and loss of the global batch, whatever the per-rank batch sizes.
 */
import { itgTargetCount, itmSamplingWeights, OBJECTIVES, sampleHardNegatives, type Objective } from './model';
import type { ParamSpec } from './optim';
import { Blip2Error } from '../common';

/** The step's view of a collective group (variable-sized all-gather and sum all-reduce, both in rank order). */
export interface StepCollective {
  readonly rank: number;
  readonly worldSize: number;
  /** Every rank's block in rank order; blocks may have different lengths (also 0). */
  allGather(block: Float32Array): Promise<Float32Array[]>;
  /** Element-wise sum over ranks; may reuse `data` for the result. */
  allReduce(data: Float32Array): Promise<Float32Array>;
}

/** A rank's share of the global batch, as flat row-major arrays. */
export interface LocalBatch {
  /** Rows in this rank's share (may be 0). */
  batch: number;
  /** Frozen ViT output before `ln_vision`: [batch, visionSeqLen, visionWidth]. */
  visionHidden: Float32Array;
  /** Q-Former token ids, [CLS] first: [batch, textLen]. */
  inputIds: Int32Array;
  /** 1 = real token, 0 = padding: [batch, textLen]. */
  attentionMask: Int32Array;
}

export interface Stage1Dims {
  visionSeqLen: number;
  visionWidth: number;
  textLen: number;
  numQueryTokens: number;
  embedDim: number;
  padTokenId: number;
}

/** Global denominators of the three objectives (so that the all-reduce SUM gives the global mean). */
export interface Stage1Normalisers {
  /** Rows of ITC = global batch B. */
  itcRows: number;
  /** Rows of ITM = 3B. */
  itmRows: number;
  /** ITG target tokens over the global batch (non-pad tokens after the first). */
  itgTokens: number;
}

export interface Stage1LossInputs {
  batch: LocalBatch;
  /** Gathered image features of the global batch [B, Q, E] and text features [B, E] (detached). */
  allImageFeats: Float32Array;
  allTextFeat: Float32Array;
  globalBatch: number;
  /** Global index of this rank's first row (ITC targets are rankOffset + i). */
  rankOffset: number;
  /**
   * Per local row, the row of its negative image in [local visionHidden ; extraVisionHidden]: local negatives reuse
   * the local rows, negatives owned by other ranks come as `extraVisionHidden` [K, S, Dv] (pre-ln_vision).
   */
  negImageRows: Int32Array;
  extraVisionHidden: Float32Array;
  extraRows: number;
  /** Negative text of each local image: [batch, T] ids and mask. */
  negTextIds: Int32Array;
  negTextMask: Int32Array;
  normalisers: Stage1Normalisers;
}

/** What the step needs from the model: two pure functions of the current parameters. */
export interface Stage1Model {
  readonly dims: Stage1Dims;
  /** Trainable parameters, in the order their gradients are laid out in the all-reduce buffer. */
  readonly trainable: readonly ParamSpec[];
  /** Current ITC temperature (`temp`). */
  temperature(): number;
  /** Normalised image features [b, Q, E] and text features [b, E] of a batch, no gradient. */
  features(batch: LocalBatch): { imageFeats: Float32Array; textFeat: Float32Array };
  /**
   * Local terms of the global losses (each a local sum over the global normaliser) and their gradients w.r.t.
   * every trainable parameter.
   */
  lossAndGrads(inputs: Stage1LossInputs): { losses: Record<Objective, number>; grads: Map<string, Float32Array> };
}

/** How ITM negatives are chosen. */
export type NegativeChoice =
  /** Hard negatives drawn from the similarity softmax, keyed by (seed, step, global row). */
  | { kind: 'sample'; seed: number; step: number }
  /** Fixed global indices per GLOBAL row (length B): negative image of text i, negative text of image i. */
  | { kind: 'given'; negImageIdx: ArrayLike<number>; negTextIdx: ArrayLike<number> };

export interface Stage1StepResult {
  /** Losses of the global batch. */
  losses: Record<Objective, number>;
  /** Gradients of the global batch's loss (summed over ranks), by parameter name. Views into `flatGrads`. */
  grads: Map<string, Float32Array>;
  flatGrads: Float32Array;
  globalBatch: number;
  rankOffset: number;
  /** Rows per rank in this step. */
  batchSizes: number[];
  normalisers: Stage1Normalisers;
  /** Global indices of the negatives used by the local rows. */
  negImageIdx: Int32Array;
  negTextIdx: Int32Array;
  /** Softmax weights the negatives were drawn from ([b, B] each; `sample` mode only). */
  itmWeights?: { t2i: Float32Array; i2t: Float32Array };
  forwardBackwardSeconds: number;
  communicationSeconds: number;
  /** Size of the gradient all-reduce buffer and the time it took. */
  allReduceBytes: number;
  allReduceSeconds: number;
}

/** The step cannot be computed from these inputs (inconsistent shapes or indices). Not retried. */
export class StepInputError extends Blip2Error {}

const now = () => performance.now() / 1000;

/**
 * Rows of a row-major table spread over ranks, fetched by global index. Each rank passes its own rows; the rows
 * another rank owns are sent only when someone asked for them. Collective: every rank must call it.
 */
export async function fetchRows(
  coll: StepCollective, localRows: Float32Array, rowLength: number, batchSizes: readonly number[], wanted: ArrayLike<number>,
): Promise<Float32Array> {
  const offsets = prefixSums(batchSizes);
  const me = coll.rank;
  const mine = (g: number) => g >= offsets[me]! && g < offsets[me]! + batchSizes[me]!;
  const remote = [...new Set(Array.from(wanted).filter((g) => !mine(g)))].sort((a, b) => a - b);
  const requests = await coll.allGather(Float32Array.from(remote));
  // Which of each rank's rows anybody asked for (every rank computes the same lists).
  const asked: number[][] = batchSizes.map(() => []);
  const seen = new Set<number>();
  for (const block of requests) for (const g of block) if (!seen.has(g)) seen.add(g);
  for (const g of [...seen].sort((a, b) => a - b)) asked[ownerOf(offsets, batchSizes, g)]!.push(g);
  const out = new Float32Array(wanted.length * rowLength);
  let blocks: Float32Array[] = [];
  if (seen.size > 0) {
    const send = new Float32Array(asked[me]!.length * rowLength);
    asked[me]!.forEach((g, k) => send.set(localRows.subarray((g - offsets[me]!) * rowLength, (g - offsets[me]! + 1) * rowLength), k * rowLength));
    blocks = await coll.allGather(send);
  }
  const position = asked.map((list) => new Map(list.map((g, k) => [g, k])));
  for (let k = 0; k < wanted.length; k++) {
    const g = wanted[k]!;
    if (mine(g)) {
      out.set(localRows.subarray((g - offsets[me]!) * rowLength, (g - offsets[me]! + 1) * rowLength), k * rowLength);
    } else {
      const owner = ownerOf(offsets, batchSizes, g);
      const at = position[owner]!.get(g)!;
      out.set(blocks[owner]!.subarray(at * rowLength, (at + 1) * rowLength), k * rowLength);
    }
  }
  return out;
}

function prefixSums(sizes: readonly number[]): number[] {
  const out: number[] = [];
  let acc = 0;
  for (const s of sizes) {
    out.push(acc);
    acc += s;
  }
  return out;
}

function ownerOf(offsets: readonly number[], sizes: readonly number[], g: number): number {
  for (let r = 0; r < sizes.length; r++) if (g >= offsets[r]! && g < offsets[r]! + sizes[r]!) return r;
  throw new StepInputError(`global row ${g} is outside the global batch of ${offsets.at(-1)! + sizes.at(-1)!} rows`);
}

/**
 * One synchronous stage-1 step over the collective group; every rank calls it with its own batch (possibly empty).
 * Returns null, on every rank, when the global batch is empty (no rank had data left).
 */
export async function distributedStage1Step(
  model: Stage1Model, coll: StepCollective, local: LocalBatch, negatives: NegativeChoice,
): Promise<Stage1StepResult | null> {
  const d = model.dims;
  const Q = d.numQueryTokens, E = d.embedDim, T = d.textLen, S = d.visionSeqLen, Dv = d.visionWidth;
  const b = local.batch;
  const visionRow = S * Dv;
  if (local.visionHidden.length !== b * visionRow || local.inputIds.length !== b * T || local.attentionMask.length !== b * T) {
    throw new StepInputError(
      `local batch of ${b} rows: visionHidden has ${local.visionHidden.length} values (want ${b}×${S}×${Dv}), ` +
        `inputIds ${local.inputIds.length} and attentionMask ${local.attentionMask.length} (want ${b}×${T})`,
    );
  }
  let fb = 0, comm = 0;
  let t0 = now();

  // 1. Features of the local rows.
  const feats = b > 0 ? model.features(local) : { imageFeats: new Float32Array(0), textFeat: new Float32Array(0) };
  fb += now() - t0;

  // 2. One all-gather of [imageFeats | textFeat | ids | mask] per row.
  const rowLen = Q * E + E + 2 * T;
  const block = new Float32Array(b * rowLen);
  for (let i = 0; i < b; i++) {
    const o = i * rowLen;
    block.set(feats.imageFeats.subarray(i * Q * E, (i + 1) * Q * E), o);
    block.set(feats.textFeat.subarray(i * E, (i + 1) * E), o + Q * E);
    for (let t = 0; t < T; t++) {
      block[o + Q * E + E + t] = local.inputIds[i * T + t]!;
      block[o + Q * E + E + T + t] = local.attentionMask[i * T + t]!;
    }
  }
  t0 = now();
  const gathered = await coll.allGather(block);
  comm += now() - t0;
  const batchSizes = gathered.map((g, r) => {
    if (g.length % rowLen !== 0) throw new StepInputError(`rank ${r} sent a feature block of ${g.length} values, not a multiple of ${rowLen}`);
    return g.length / rowLen;
  });
  const B = batchSizes.reduce((a, c) => a + c, 0);
  if (B === 0) return null; // every rank is out of data: the epoch is over
  const rankOffset = batchSizes.slice(0, coll.rank).reduce((a, c) => a + c, 0);
  const allImageFeats = new Float32Array(B * Q * E);
  const allTextFeat = new Float32Array(B * E);
  const allIds = new Int32Array(B * T);
  const allMask = new Int32Array(B * T);
  let row = 0;
  for (const g of gathered) {
    for (let i = 0; i < g.length / rowLen; i++, row++) {
      const o = i * rowLen;
      allImageFeats.set(g.subarray(o, o + Q * E), row * Q * E);
      allTextFeat.set(g.subarray(o + Q * E, o + Q * E + E), row * E);
      for (let t = 0; t < T; t++) {
        allIds[row * T + t] = g[o + Q * E + E + t]!;
        allMask[row * T + t] = g[o + Q * E + E + T + t]!;
      }
    }
  }
  const normalisers: Stage1Normalisers = { itcRows: B, itmRows: 3 * B, itgTokens: itgTargetCount(allIds, T, d.padTokenId) };

  // 3. Negatives for the local rows, as global indices.
  let negImageIdx: Int32Array, negTextIdx: Int32Array;
  let weights: { t2i: Float32Array; i2t: Float32Array } | undefined;
  if (negatives.kind === 'given') {
    if (negatives.negImageIdx.length !== B || negatives.negTextIdx.length !== B) {
      throw new StepInputError(`given negatives have ${negatives.negImageIdx.length} and ${negatives.negTextIdx.length} entries, the global batch has ${B} rows`);
    }
    negImageIdx = Int32Array.from({ length: b }, (_, i) => negatives.negImageIdx[rankOffset + i]!);
    negTextIdx = Int32Array.from({ length: b }, (_, i) => negatives.negTextIdx[rankOffset + i]!);
    for (const g of [...negImageIdx, ...negTextIdx]) {
      if (!Number.isInteger(g) || g < 0 || g >= B) throw new StepInputError(`negative index ${g} is outside the global batch [0, ${B})`);
    }
  } else {
    t0 = now();
    weights = b > 0
      ? itmSamplingWeights({ ...feats, allImageFeats, allTextFeat }, { rows: b, globalBatch: B, numQueryTokens: Q, embedDim: E }, model.temperature(), rankOffset)
      : { t2i: new Float32Array(0), i2t: new Float32Array(0) };
    ({ negImageIdx, negTextIdx } = sampleHardNegatives(weights, b, B, { seed: negatives.seed, step: negatives.step, rankOffset }));
    fb += now() - t0;
  }

  // 4. Negative images: local ones by row, the others fetched from their owners; negative texts from the gathered ids.
  t0 = now();
  const localRange = (g: number) => g >= rankOffset && g < rankOffset + b;
  const remote = [...new Set(Array.from(negImageIdx).filter((g) => !localRange(g)))].sort((x, y) => x - y);
  const extraVisionHidden = await fetchRows(coll, local.visionHidden, visionRow, batchSizes, remote);
  comm += now() - t0;
  const extraAt = new Map(remote.map((g, k) => [g, b + k]));
  const negImageRows = Int32Array.from(negImageIdx, (g) => (localRange(g) ? g - rankOffset : extraAt.get(g)!));
  const negTextIds = new Int32Array(b * T);
  const negTextMask = new Int32Array(b * T);
  for (let i = 0; i < b; i++) {
    negTextIds.set(allIds.subarray(negTextIdx[i]! * T, (negTextIdx[i]! + 1) * T), i * T);
    negTextMask.set(allMask.subarray(negTextIdx[i]! * T, (negTextIdx[i]! + 1) * T), i * T);
  }

  // 5. Local loss terms and gradients, globally normalised.
  t0 = now();
  const { offsets, total } = gradientLayout(model.trainable);
  const flat = new Float32Array(total + OBJECTIVES.length);
  if (b > 0) {
    const out = model.lossAndGrads({
      batch: local, allImageFeats, allTextFeat, globalBatch: B, rankOffset, negImageRows, extraVisionHidden, extraRows: remote.length,
      negTextIds, negTextMask, normalisers,
    });
    for (const p of model.trainable) {
      const g = out.grads.get(p.name);
      if (!g) throw new StepInputError(`the model returned no gradient for trainable parameter ${p.name}`);
      flat.set(g, offsets.get(p.name)!);
    }
    OBJECTIVES.forEach((o, k) => (flat[total + k] = out.losses[o]));
  }
  fb += now() - t0;

  // 6. Sum over ranks.
  t0 = now();
  const reduced = coll.worldSize > 1 ? await coll.allReduce(flat) : flat;
  const allReduceSeconds = now() - t0;
  comm += allReduceSeconds;
  const grads = gradientViews(reduced, model.trainable, offsets);
  const losses = { itc: reduced[total]!, itm: reduced[total + 1]!, itg: reduced[total + 2]! };
  return {
    losses, grads, flatGrads: reduced.subarray(0, total), globalBatch: B, rankOffset, batchSizes, normalisers,
    negImageIdx, negTextIdx, itmWeights: weights, forwardBackwardSeconds: fb, communicationSeconds: comm,
    allReduceBytes: flat.byteLength, allReduceSeconds,
  };
}

/**
 * The all-reduce buffer's layout: each trainable parameter's offset in trainable order, and the total length (the
 * loss terms follow it).
 */
export function gradientLayout(trainable: readonly ParamSpec[]): { offsets: Map<string, number>; total: number } {
  const offsets = new Map<string, number>();
  let total = 0;
  for (const p of trainable) {
    offsets.set(p.name, total);
    total += p.shape.reduce((a, c) => a * c, 1);
  }
  return { offsets, total };
}

/** Each parameter's gradient as a view into the reduced buffer (no copy). */
export function gradientViews(reduced: Float32Array, trainable: readonly ParamSpec[], offsets: Map<string, number>): Map<string, Float32Array> {
  const grads = new Map<string, Float32Array>();
  for (const p of trainable) {
    const o = offsets.get(p.name)!;
    grads.set(p.name, reduced.subarray(o, o + p.shape.reduce((a, c) => a * c, 1)));
  }
  return grads;
}

/** The step's view of a collective group from trainer/collective (sum all-reduce in place, variable all-gather). */
export function collectiveAdapter(group: {
  readonly rank: number;
  readonly worldSize: number;
  allGather(block: Float32Array): Promise<Float32Array[]>;
  allReduce(tensors: Float32Array[], opts?: { op?: 'sum' | 'mean' }): Promise<void>;
  broadcast(data: Float32Array, root: number): Promise<void>;
}): StepCollective & { broadcast(data: Float32Array, root: number): Promise<void> } {
  return {
    get rank() {
      return group.rank;
    },
    get worldSize() {
      return group.worldSize;
    },
    allGather: (block) => group.allGather(block),
    async allReduce(data) {
      await group.allReduce([data], { op: 'sum' });
      return data;
    },
    broadcast: (data, root) => group.broadcast(data, root),
  };
}
