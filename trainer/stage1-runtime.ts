/**
 * The model as the training step sees it: the stage-1 trainable parameters of trainer/model held as tf tensors,
 * exposed through flat Float32Arrays (what the optimiser, the all-reduce and the checkpoint use).
 */
import {
  paramManifest, stage1Features, stage1Step, trainableNames, visionSeqLen, type Blip2Config, type Params,
} from './model';
import { tf } from './engine';
import type { ParamSpec } from './optim';
import type { LocalBatch, Stage1Dims, Stage1LossInputs, Stage1Model } from './step';
import type { Objective } from './model';
import { StepInputError } from './step';

export class Stage1Runtime implements Stage1Model {
  readonly dims: Stage1Dims;
  readonly trainable: ParamSpec[];

  /** Takes ownership of `params` (the stage-1 trainable set; other entries are ignored). */
  constructor(readonly config: Blip2Config, private params: Params) {
    const names = new Set(trainableNames(config, 1));
    this.trainable = paramManifest(config).filter((p) => names.has(p.name)).map((p) => ({ name: p.name, shape: [...p.shape] }));
    for (const p of this.trainable) {
      const t = params.get(p.name);
      if (!t) throw new StepInputError(`parameter ${p.name} is missing from the model's parameters`);
      if (JSON.stringify(t.shape) !== JSON.stringify(p.shape)) throw new StepInputError(`parameter ${p.name} has shape [${t.shape.join(', ')}], expected [${p.shape.join(', ')}]`);
    }
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
    return new Map(this.trainable.map((p) => [p.name, Float32Array.from(this.params.get(p.name)!.dataSync() as Float32Array)]));
  }

  /** Replaces the trainable values (after an optimiser step, a broadcast or a restore). */
  setValues(values: Map<string, Float32Array>): void {
    for (const p of this.trainable) {
      const v = values.get(p.name);
      if (!v) throw new StepInputError(`no value for parameter ${p.name}`);
      const old = this.params.get(p.name)!;
      this.params.set(p.name, tf.tensor(v, [...p.shape], 'float32'));
      old.dispose();
    }
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
    for (const t of this.params.values()) t.dispose();
  }
}
