/**
 * Stage 2 as the training step sees it (BLIP-2 §3.3; LAVIS blip2_opt.py `Blip2OPT.forward` under
 * torch.distributed): the stage-2 trainable parameters (the Q-Former's query path, `query_tokens`, ln_vision,
 * `language_projection`), the frozen language model, and the synchronous data-parallel step:
 *
 *  1. Each rank tokenizes its captions for the LM (`caption + "\n"`, BOS first, padded to its own longest caption:
 *     ranks may differ in length, which the step does not mind) and counts its target tokens.
 *  2. All-gather of (rows, target tokens): the global batch and the global count of target tokens.
 *  3. Loss and gradients on the local rows, the local sum of token losses divided by the GLOBAL count.
 *  4. All-reduce SUM of the gradients and the loss term (one buffer): the one-process gradient and loss of the
 *     global batch (the mean over its target tokens), whatever the per-rank batch sizes.
 */
import type { CaptionTokenizer } from '../dataloader';
import { tf } from './engine';
import { stage2Step, stage2TargetCount, visionSeqLen, type Blip2Config, type LanguageModel, type LanguageModelText, type Params } from './model';
import type { ParamSpec } from './optim';
import { TrainableParams, type StageBatch, type StageModel, type StageStepResult } from './stage-model';
import { gradientLayout, gradientViews, StepInputError, type StepCollective } from './step';

export const STAGE2_OBJECTIVES = ['lm'] as const;

const now = () => performance.now() / 1000;

export class Stage2Runtime implements StageModel {
  readonly stage = 2;
  readonly objectives = STAGE2_OBJECTIVES;
  readonly trainable: ParamSpec[];
  private readonly store: TrainableParams;

  /**
   * Takes ownership of `params` (the stage-2 trainable set). `lmTokenizer` is the LM's (kind `opt`); its ids must
   * fit the LM's vocabulary. `promptLength`: leading text tokens that are not targets (0 = the empty pre-training
   * prompt: BOS is a target, as in LAVIS).
   */
  constructor(
    readonly config: Blip2Config, params: Params, readonly lm: LanguageModel, private readonly lmTokenizer: CaptionTokenizer,
    private readonly promptLength = 0,
  ) {
    this.store = new TrainableParams(config, params, 2);
    this.trainable = this.store.trainable;
    if (lmTokenizer.kind !== 'opt') throw new StepInputError(`stage 2 needs the language model's tokenizer (GPT-2 byte-level BPE), got a ${lmTokenizer.kind} tokenizer`);
    if (lmTokenizer.vocabSize > lm.vocabSize) {
      throw new StepInputError(`the language model's tokenizer has ${lmTokenizer.vocabSize} ids, more than the language model's vocabulary of ${lm.vocabSize}`);
    }
  }

  values(): Map<string, Float32Array> {
    return this.store.values();
  }

  setValues(values: Map<string, Float32Array>): void {
    this.store.setValues(values);
  }

  /** The LM's text of a batch: `caption + "\n"`, BOS first, truncated to max_txt_len, padded to the longest row. */
  tokenize(captions: readonly string[]): LanguageModelText {
    const t = this.lmTokenizer.encodeBatch(captions);
    const rows = (a: Int32Array) => Array.from({ length: t.batchSize }, (_, b) => Array.from(a.subarray(b * t.seqLength, (b + 1) * t.seqLength)));
    return { ids: rows(t.inputIds), mask: rows(t.attentionMask) };
  }

  /** Target tokens of a rank's text (the all-gathered sum normalises the loss). */
  targetCount(text: LanguageModelText): number {
    return text.ids.length ? stage2TargetCount(this.lm, text, this.promptLength) : 0;
  }

  /** The local term of the global loss (Σ CE / `tokens`) and its gradient w.r.t. every trainable parameter. */
  lossAndGrads(visionHidden: Float32Array, batch: number, text: LanguageModelText, tokens: number): { loss: number; grads: Map<string, Float32Array> } {
    const v = this.config.vision_config;
    const T = text.ids[0]!.length;
    const made = [
      tf.tensor3d(visionHidden, [batch, visionSeqLen(v), v.hidden_size]),
      tf.tensor2d(text.ids.flat(), [batch, T], 'int32'),
      tf.tensor2d(text.mask.flat(), [batch, T], 'int32'),
    ] as const;
    try {
      const r = stage2Step(this.store.params, this.lm, { visionHidden: made[0], optInputIds: made[1], optAttentionMask: made[2], normalisers: { tokens } }, {
        promptLength: this.promptLength,
        trainable: this.trainable.map((p) => p.name),
      });
      try {
        const grads = new Map<string, Float32Array>();
        for (const p of this.trainable) grads.set(p.name, r.grads.get(p.name)!.dataSync() as Float32Array);
        return { loss: r.loss, grads };
      } finally {
        r.dispose();
      }
    } finally {
      for (const t of made) t.dispose();
    }
  }

  step(coll: StepCollective, batch: StageBatch): Promise<StageStepResult | null> {
    return distributedStage2Step(this, coll, batch);
  }

  dispose(): void {
    this.store.dispose();
  }
}

/**
 * One synchronous stage-2 step over the collective group; every rank calls it with its own batch (possibly empty).
 * Returns null, on every rank, when the global batch is empty.
 */
export async function distributedStage2Step(model: Stage2Runtime, coll: StepCollective, local: StageBatch): Promise<StageStepResult | null> {
  const b = local.batch;
  if (local.captions.length !== b) throw new StepInputError(`local batch of ${b} rows has ${local.captions.length} captions`);
  let fb = 0, comm = 0;
  let t0 = now();
  // 1. The LM's text and its target tokens.
  const text = b > 0 ? model.tokenize(local.captions) : { ids: [], mask: [] };
  const mine = model.targetCount(text);
  fb += now() - t0;
  // 2. Global rows and target tokens.
  t0 = now();
  const counts = await coll.allGather(Float32Array.of(b, mine));
  comm += now() - t0;
  const globalBatch = counts.reduce((n, c) => n + c[0]!, 0);
  const tokens = counts.reduce((n, c) => n + c[1]!, 0);
  if (globalBatch === 0) return null;
  // 3. The local term and its gradients (a rank without rows, or without targets, adds zeros).
  t0 = now();
  const { offsets, total } = gradientLayout(model.trainable);
  const flat = new Float32Array(total + 1);
  if (b > 0 && mine > 0) {
    const out = model.lossAndGrads(local.visionHidden, b, text, tokens);
    for (const p of model.trainable) flat.set(out.grads.get(p.name)!, offsets.get(p.name)!);
    flat[total] = out.loss;
  }
  fb += now() - t0;
  // 4. Sum over ranks.
  t0 = now();
  const reduced = coll.worldSize > 1 ? await coll.allReduce(flat) : flat;
  const allReduceSeconds = now() - t0;
  comm += allReduceSeconds;
  const grads = gradientViews(reduced, model.trainable, offsets);
  return {
    losses: { lm: reduced[total]! }, grads, globalBatch, forwardBackwardSeconds: fb, communicationSeconds: comm,
    allReduceBytes: flat.byteLength, allReduceSeconds,
  };
}
