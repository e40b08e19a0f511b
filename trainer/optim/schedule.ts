/**
 * LAVIS `linear_warmup_cosine_lr` (lavis/common/optims.py `LinearWarmupCosineLRScheduler`), see
 * ../shared/docs/blip2-spec.md §8. It is driven by (epoch, step within the epoch), as the LAVIS runner calls
 * `lr_scheduler.step(cur_epoch=epoch, cur_step=i)` before every iteration:
 *
 *   epoch 0:  lr = min(init_lr, warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1))
 *   epoch e≥1: lr = (init_lr - min_lr) * 0.5 * (1 + cos(pi * e / max_epoch)) + min_lr   (per epoch, not per step)
 *
 * Oddities kept from LAVIS: warm-up only happens in epoch 0 (a warm-up longer than the first epoch is cut short),
 * and the cosine is constant within an epoch.
 */
import { UsageError } from '../../common';

export interface LinearWarmupCosineOptions {
  /** Peak learning rate (LAVIS `init_lr`). Stage-1 yaml: 1e-4. */
  initLr: number;
  /** Floor of the cosine (LAVIS `min_lr`). Default 0. Stage-1 yaml: 1e-5. */
  minLr?: number;
  /** Learning rate at step 0 of epoch 0 (LAVIS `warmup_lr`; a negative value means `initLr`). Default: `initLr`. */
  warmupLr?: number;
  /** Warm-up length in steps within epoch 0 (LAVIS `warmup_steps`). Default 0 (no warm-up). */
  warmupSteps?: number;
  /** Number of epochs of the run (LAVIS `max_epoch`); the cosine reaches `minLr` at this epoch. */
  maxEpoch: number;
}

export interface ResolvedLinearWarmupCosineOptions {
  initLr: number;
  minLr: number;
  warmupLr: number;
  warmupSteps: number;
  maxEpoch: number;
}

export function resolveLinearWarmupCosineOptions(o: LinearWarmupCosineOptions): ResolvedLinearWarmupCosineOptions {
  const r = {
    initLr: o.initLr,
    minLr: o.minLr ?? 0,
    warmupLr: o.warmupLr === undefined || o.warmupLr < 0 ? o.initLr : o.warmupLr,
    warmupSteps: o.warmupSteps ?? 0,
    maxEpoch: o.maxEpoch,
  };
  const check = (key: keyof ResolvedLinearWarmupCosineOptions, ok: boolean, rule: string) => {
    if (!ok) throw new UsageError(`learning-rate schedule: ${key} = ${String(r[key])} is invalid: ${rule}`);
  };
  check('initLr', Number.isFinite(r.initLr) && r.initLr >= 0, 'must be a finite number ≥ 0');
  check('minLr', Number.isFinite(r.minLr) && r.minLr >= 0, 'must be a finite number ≥ 0');
  check('warmupLr', Number.isFinite(r.warmupLr), 'must be a finite number');
  check('warmupSteps', Number.isInteger(r.warmupSteps) && r.warmupSteps >= 0, 'must be an integer ≥ 0');
  check('maxEpoch', Number.isInteger(r.maxEpoch) && r.maxEpoch >= 1, 'must be an integer ≥ 1');
  return r;
}

/** The learning rate for iteration `step` (0-based, counted within the epoch) of epoch `epoch` (0-based). */
export function linearWarmupCosineLr(options: LinearWarmupCosineOptions, epoch: number, step: number): number {
  const o = resolveLinearWarmupCosineOptions(options);
  if (!Number.isInteger(epoch) || epoch < 0) throw new UsageError(`learning-rate schedule: epoch = ${epoch} must be an integer ≥ 0`);
  if (!Number.isInteger(step) || step < 0) throw new UsageError(`learning-rate schedule: step = ${step} must be an integer ≥ 0`);
  if (epoch === 0) {
    return Math.min(o.initLr, o.warmupLr + ((o.initLr - o.warmupLr) * step) / Math.max(o.warmupSteps, 1));
  }
  return (o.initLr - o.minLr) * 0.5 * (1 + Math.cos((Math.PI * epoch) / o.maxEpoch)) + o.minLr;
}
