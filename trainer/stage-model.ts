/**
 * What the training loop needs of a pre-training stage: its trainable parameters and its synchronous distributed
 * step. Stage 1 (`Stage1Runtime`: ITC, ITM, ITG) and stage 2 (`Stage2Runtime`: the LM loss through the frozen
 * language model) implement it; the loop, the checkpoints and the all-reduce do not know which one runs.
 */
import { tf } from './engine';
import { paramManifest, trainableNames, type Blip2Config, type Params, type Stage } from './model';
import type { ParamSpec } from './optim';
import { StepInputError, type LocalBatch, type StepCollective } from './step';

/** A rank's share of the global batch: the ViT output and the Q-Former's tokens, and the captions themselves. */
export interface StageBatch extends LocalBatch {
  /** Cleaned captions of the rows (stage 2 tokenizes them for the language model). */
  captions: readonly string[];
}

/** The global batch's result of one step, the same on every rank. */
export interface StageStepResult {
  /** Loss of each objective of the stage over the global batch (`itc`, `itm`, `itg`; or `lm`). */
  losses: Record<string, number>;
  /** Gradient of the global batch's loss, summed over ranks, by parameter name. */
  grads: Map<string, Float32Array>;
  globalBatch: number;
  forwardBackwardSeconds: number;
  communicationSeconds: number;
  allReduceBytes: number;
  allReduceSeconds: number;
}

export interface StageModel {
  readonly stage: 1 | 2;
  /** Names of the losses the step reports. */
  readonly objectives: readonly string[];
  /** Trainable parameters, in the order of the all-reduce buffer and the checkpoint. */
  readonly trainable: readonly ParamSpec[];
  /** Replaces the trainable values (after an optimiser step, a broadcast or a restore). */
  setValues(values: Map<string, Float32Array>): void;
  /**
   * One synchronous step: every rank calls it with its own batch (empty when out of data). Null, on every rank,
   * when no rank had data. `seed` and `step` key any random draw (stage 1's hard negatives).
   */
  step(coll: StepCollective, batch: StageBatch, at: { seed: number; step: number }): Promise<StageStepResult | null>;
  dispose(): void;
}

/** An empty batch: a rank out of data still takes part in the step's collectives. */
export const EMPTY_STAGE_BATCH: StageBatch = {
  batch: 0, visionHidden: new Float32Array(0), inputIds: new Int32Array(0), attentionMask: new Int32Array(0), captions: [],
};

/**
 * The trainable parameters of one stage held as tf tensors (what the model functions read), exchanged with the
 * loop as flat Float32Arrays (what the optimiser, the all-reduce and the checkpoint use).
 */
export class TrainableParams {
  readonly trainable: ParamSpec[];

  /** Takes ownership of `params`; every trainable name of `stage` must be there with its manifest shape. */
  constructor(config: Blip2Config, readonly params: Params, stage: Stage) {
    const names = new Set(trainableNames(config, stage));
    this.trainable = paramManifest(config).filter((p) => names.has(p.name)).map((p) => ({ name: p.name, shape: [...p.shape] }));
    for (const p of this.trainable) {
      const t = params.get(p.name);
      if (!t) throw new StepInputError(`parameter ${p.name} is missing from the model's parameters`);
      if (JSON.stringify(t.shape) !== JSON.stringify(p.shape)) throw new StepInputError(`parameter ${p.name} has shape [${t.shape.join(', ')}], expected [${p.shape.join(', ')}]`);
    }
  }

  /** Copies of the trainable values, in `trainable` order. */
  values(): Map<string, Float32Array> {
    return new Map(this.trainable.map((p) => [p.name, Float32Array.from(this.params.get(p.name)!.dataSync() as Float32Array)]));
  }

  setValues(values: Map<string, Float32Array>): void {
    for (const p of this.trainable) {
      const v = values.get(p.name);
      if (!v) throw new StepInputError(`no value for parameter ${p.name}`);
      const old = this.params.get(p.name)!;
      this.params.set(p.name, tf.tensor(v, [...p.shape], 'float32'));
      old.dispose();
    }
  }

  dispose(): void {
    for (const t of this.params.values()) t.dispose();
  }
}
