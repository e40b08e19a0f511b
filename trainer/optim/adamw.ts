/**
 * AdamW with decoupled weight decay, step for step as torch.optim.AdamW (single-tensor path, amsgrad off), which
 * LAVIS uses for BLIP-2 (lavis/runners/runner_base.py). Parameters, gradients and moments are Float32Arrays keyed by
 * the parameter's checkpoint name, so the state checkpoints (safetensors) and all-reduces without conversion.
 *
 *   p   ← p · (1 − lr · wd)                       (only for the decayed group, see param-groups.ts)
 *   m   ← β1 · m + (1 − β1) · g
 *   v   ← β2 · v + (1 − β2) · g²
 *   p   ← p − lr / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
 *
 * Optional global-norm clipping as torch.nn.utils.clip_grad_norm_: g ← g · min(1, maxNorm / (‖g‖₂ + 1e-6)),
 * with ‖g‖₂ over all gradients together. Arithmetic is done in float64 and stored in float32.
 */
import { UsageError } from '../../common';
import { isDecayed, type ParamSpec } from './param-groups';

export interface AdamWOptions {
  /** β1, the first-moment decay. Default 0.9. */
  beta1?: number;
  /** β2, the second-moment decay. Default 0.999 (LAVIS `beta2`; the paper quotes 0.98). */
  beta2?: number;
  /** ε added to the denominator. Default 1e-8 (torch's default). */
  eps?: number;
  /** Decoupled weight decay of the decayed group. Default 0.05 (BLIP-2). */
  weightDecay?: number;
  /** Clip the global gradient norm to this value; 0 or undefined = no clipping (LAVIS does not clip). */
  maxGradNorm?: number;
}

export interface ResolvedAdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm: number;
}

export function resolveAdamWOptions(o: AdamWOptions = {}): ResolvedAdamWOptions {
  const r: ResolvedAdamWOptions = {
    beta1: o.beta1 ?? 0.9,
    beta2: o.beta2 ?? 0.999,
    eps: o.eps ?? 1e-8,
    weightDecay: o.weightDecay ?? 0.05,
    maxGradNorm: o.maxGradNorm ?? 0,
  };
  const check = (key: keyof ResolvedAdamWOptions, ok: boolean, rule: string) => {
    if (!ok) throw new UsageError(`optimizer: ${key} = ${String(r[key])} is invalid: ${rule}`);
  };
  check('beta1', r.beta1 >= 0 && r.beta1 < 1, 'must be in [0, 1)');
  check('beta2', r.beta2 >= 0 && r.beta2 < 1, 'must be in [0, 1)');
  check('eps', Number.isFinite(r.eps) && r.eps > 0, 'must be a finite number > 0');
  check('weightDecay', Number.isFinite(r.weightDecay) && r.weightDecay >= 0, 'must be a finite number ≥ 0');
  check('maxGradNorm', Number.isFinite(r.maxGradNorm) && r.maxGradNorm >= 0, 'must be a finite number ≥ 0 (0 = off)');
  return r;
}

/** What a checkpoint stores of the optimiser: the step count and both moments of every parameter. */
export interface AdamWState {
  /** Number of optimiser steps taken (torch's `state['step']`). */
  step: number;
  /** First moments (torch `exp_avg`), keyed by parameter name. */
  expAvg: Map<string, Float32Array>;
  /** Second moments (torch `exp_avg_sq`), keyed by parameter name. */
  expAvgSq: Map<string, Float32Array>;
}

export interface AdamWStepResult {
  /** Global L2 norm of the gradients before clipping. */
  gradNorm: number;
  /** Factor the gradients were multiplied by (1 when not clipped). */
  clipCoef: number;
}

/** The global L2 norm over all gradients (float64 accumulation). */
export function globalGradNorm(grads: Iterable<Float32Array>): number {
  let sum = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sum += g[i]! * g[i]!;
  return Math.sqrt(sum);
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

export class AdamW {
  readonly options: ResolvedAdamWOptions;
  readonly params: readonly ParamSpec[];
  private stepCount = 0;
  private readonly expAvg = new Map<string, Float32Array>();
  private readonly expAvgSq = new Map<string, Float32Array>();
  private readonly decayed = new Set<string>();

  constructor(params: readonly ParamSpec[], options: AdamWOptions = {}) {
    this.options = resolveAdamWOptions(options);
    this.params = params.map((p) => ({ name: p.name, shape: [...p.shape] }));
    for (const p of this.params) {
      if (this.expAvg.has(p.name)) throw new UsageError(`optimizer: parameter ${p.name} is listed twice`);
      this.expAvg.set(p.name, new Float32Array(numel(p.shape)));
      this.expAvgSq.set(p.name, new Float32Array(numel(p.shape)));
      if (isDecayed(p.name, p.shape)) this.decayed.add(p.name);
    }
  }

  /** Number of steps taken so far. */
  get step(): number {
    return this.stepCount;
  }

  /** Whether weight decay applies to the named parameter. */
  isDecayed(name: string): boolean {
    return this.decayed.has(name);
  }

  /** The live state (moments are not copied: copy before mutating if you keep it). */
  state(): AdamWState {
    return { step: this.stepCount, expAvg: this.expAvg, expAvgSq: this.expAvgSq };
  }

  /** Restores a state saved by `state()`; every parameter's moments must be present with the right length. */
  loadState(s: AdamWState): void {
    if (!Number.isInteger(s.step) || s.step < 0) throw new UsageError(`optimizer state: step = ${s.step} must be an integer ≥ 0`);
    for (const p of this.params) {
      for (const [what, src] of [['exp_avg', s.expAvg], ['exp_avg_sq', s.expAvgSq]] as const) {
        const a = src.get(p.name);
        if (!a) throw new UsageError(`optimizer state: ${what} of parameter ${p.name} is missing`);
        if (a.length !== numel(p.shape)) {
          throw new UsageError(`optimizer state: ${what} of ${p.name} has ${a.length} elements, expected ${numel(p.shape)} (shape [${p.shape.join(', ')}])`);
        }
      }
    }
    const known = new Set(this.params.map((p) => p.name));
    const unexpected = [...s.expAvg.keys(), ...s.expAvgSq.keys()].filter((k) => !known.has(k));
    if (unexpected.length) throw new UsageError(`optimizer state: unexpected parameters ${[...new Set(unexpected)].join(', ')}`);
    for (const p of this.params) {
      this.expAvg.get(p.name)!.set(s.expAvg.get(p.name)!);
      this.expAvgSq.get(p.name)!.set(s.expAvgSq.get(p.name)!);
    }
    this.stepCount = s.step;
  }

  /**
   * One update, in place on `params`, with learning rate `lr`. `grads` must hold a gradient for every parameter;
   * when clipping is on, they are scaled in place too.
   */
  update(params: Map<string, Float32Array>, grads: Map<string, Float32Array>, lr: number): AdamWStepResult {
    if (!Number.isFinite(lr) || lr < 0) throw new UsageError(`optimizer: learning rate ${lr} must be a finite number ≥ 0`);
    for (const p of this.params) {
      const n = numel(p.shape);
      const w = params.get(p.name);
      const g = grads.get(p.name);
      if (!w) throw new UsageError(`optimizer: parameter ${p.name} is missing from the parameters`);
      if (!g) throw new UsageError(`optimizer: parameter ${p.name} has no gradient`);
      if (w.length !== n || g.length !== n) {
        throw new UsageError(`optimizer: ${p.name} has ${w.length} values and ${g.length} gradient values, expected ${n}`);
      }
    }
    const { beta1, beta2, eps, weightDecay, maxGradNorm } = this.options;
    const gradNorm = globalGradNorm(this.params.map((p) => grads.get(p.name)!));
    if (!Number.isFinite(gradNorm)) throw new UsageError(`optimizer: gradient norm is ${gradNorm} (non-finite gradient)`);
    let clipCoef = 1;
    if (maxGradNorm > 0) clipCoef = Math.min(1, maxGradNorm / (gradNorm + 1e-6));
    this.stepCount += 1;
    const t = this.stepCount;
    const stepSize = lr / (1 - beta1 ** t);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** t);
    for (const p of this.params) {
      const w = params.get(p.name)!;
      const g = grads.get(p.name)!;
      const m = this.expAvg.get(p.name)!;
      const v = this.expAvgSq.get(p.name)!;
      const shrink = this.decayed.has(p.name) ? 1 - lr * weightDecay : 1;
      for (let i = 0; i < w.length; i++) {
        let gi = g[i]!;
        if (clipCoef < 1) g[i] = gi = gi * clipCoef;
        // Moments are read back after storing, so that they are the float32 values torch would use.
        m[i] = beta1 * m[i]! + (1 - beta1) * gi;
        v[i] = beta2 * v[i]! + (1 - beta2) * gi * gi;
        w[i] = w[i]! * shrink - (stepSize * m[i]!) / (Math.sqrt(v[i]!) / bc2Sqrt + eps);
      }
    }
    return { gradNorm, clipCoef };
  }
}
