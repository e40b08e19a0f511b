/**
 * Stage 1 as the training step sees it: the stage-1 trainable parameters of trainer/model (held by
 * `TrainableParams`), the two pure functions `distributedStage1Step` needs (features, and local losses and
 * gradients), and the loop's `StageModel.step`.
 */
import { OBJECTIVES, stage1Features, stage1Step, visionSeqLen, type Blip2Config, type Params } from './model';
import { tf } from './engine';
import type { ParamSpec } from './optim';
import { TrainableParams, type StageBatch, type StageModel, type StageStepResult } from './stage-model';
import { distributedStage1Step, type LocalBatch, type Stage1Dims, type Stage1LossInputs, type Stage1Model, type StepCollective } from './step';
import type { Objective } from './model';

export class Stage1Runtime implements Stage1Model, StageModel {
  readonly stage = 1;
  readonly objectives = OBJECTIVES;
  readonly dims: Stage1Dims;
  readonly trainable: ParamSpec[];
  private readonly store: TrainableParams;
  private readonly params: Params;

  /** Takes ownership of `params` (the stage-1 trainable set; other entries are ignored). */
  constructor(readonly config: Blip2Config, params: Params) {
    this.store = new TrainableParams(config, params, 1);
    this.params = params;
    this.trainable = this.store.trainable;
    this.dims = {
      visionSeqLen: visionSeqLen(config.vision_config),
      visionWidth: config.vision_config.hidden_size,
      textLen: config.lavis_config.max_txt_len,
      numQueryTokens: config.num_query_tokens,
      embedDim: config.lavis_config.embed_dim,
      padTokenId: config.qformer_config.pad_token_id,
    };
  }

  temperature(): number {
    return this.params.get('temp')!.dataSync()[0]!;
  }

  /** Copies of the trainable values, in `trainable` order. */
  values(): Map<string, Float32Array> {
    return this.store.values();
  }

  /** Replaces the trainable values (after an optimiser step, a broadcast or a restore). */
  setValues(values: Map<string, Float32Array>): void {
    this.store.setValues(values);
  }

  /** The loop's step: hard negatives drawn from the similarity softmax, keyed by (seed, step, global row). */
  step(coll: StepCollective, batch: StageBatch, at: { seed: number; step: number }): Promise<StageStepResult | null> {
    return distributedStage1Step(this, coll, batch, { kind: 'sample', seed: at.seed, step: at.step });
  }

  private tensors(batch: LocalBatch) {
    const d = this.dims;
    return {
      visionHidden: tf.tensor3d(batch.visionHidden, [batch.batch, d.visionSeqLen, d.visionWidth]),
      inputIds: tf.tensor2d(batch.inputIds, [batch.batch, d.textLen], 'int32'),
      attentionMask: tf.tensor2d(batch.attentionMask, [batch.batch, d.textLen], 'int32'),
    };
  }

  features(batch: LocalBatch): { imageFeats: Float32Array; textFeat: Float32Array } {
    return tf.tidy(() => {
      const f = stage1Features(this.params, this.config, this.tensors(batch));
      return { imageFeats: f.imageFeats.dataSync() as Float32Array, textFeat: f.textFeat.dataSync() as Float32Array };
    });
  }

  lossAndGrads(inputs: Stage1LossInputs): { losses: Record<Objective, number>; grads: Map<string, Float32Array> } {
    const d = this.dims;
    const B = inputs.globalBatch;
    const b = inputs.batch.batch;
    const own = this.tensors(inputs.batch);
    const made: tf.Tensor[] = [own.visionHidden, own.inputIds, own.attentionMask];
    const mk = <T extends tf.Tensor>(t: T): T => (made.push(t), t);
    try {
      const r = stage1Step(this.params, this.config, {
        ...own,
        gathered: {
          allImageFeats: mk(tf.tensor3d(inputs.allImageFeats, [B, d.numQueryTokens, d.embedDim])),
          allTextFeat: mk(tf.tensor2d(inputs.allTextFeat, [B, d.embedDim])),
          offset: inputs.rankOffset,
        },
        negatives: {
          negImageIndex: Array.from(inputs.negImageRows),
          extraVisionHidden: inputs.extraRows > 0
            ? mk(tf.tensor3d(inputs.extraVisionHidden, [inputs.extraRows, d.visionSeqLen, d.visionWidth]))
            : undefined,
          negTextIds: mk(tf.tensor2d(inputs.negTextIds, [b, d.textLen], 'int32')),
          negTextMask: mk(tf.tensor2d(inputs.negTextMask, [b, d.textLen], 'int32')),
        },
        normalisers: inputs.normalisers,
      });
      try {
        const grads = new Map<string, Float32Array>();
        for (const p of this.trainable) grads.set(p.name, r.grads.get(p.name)!.dataSync() as Float32Array);
        return { losses: { itc: r.losses.itc, itm: r.losses.itm, itg: r.losses.itg }, grads };
      } finally {
        r.dispose();
      }
    } finally {
      for (const t of made) t.dispose();
    }
  }

  dispose(): void {
    this.store.dispose();
  }
}
