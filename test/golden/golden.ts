/**
 * Access to a golden set (../shared/golden or $BLIP2_GOLDEN_DIR) and the comparisons its README prescribes.
 * Nothing about the set is assumed: config, sizes, ranks and tolerances come from golden.json.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { readSafetensors, toFloat32, toInt32, type SafeTensor } from '../../common';
import { blip2ConfigFromLavis, type Blip2Config } from '../../trainer/model';
import { tf } from '../../trainer/engine';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * $BLIP2_GOLDEN_DIR, else `../shared/golden` relative to the repository root (for a checkout in a worktree folder,
 * the first `shared/golden` found walking up from there).
 */
export function goldenDir(): string {
  const env = process.env.BLIP2_GOLDEN_DIR;
  if (env) return resolve(repoRoot, env);
  for (let dir = resolve(repoRoot, '..'); ; dir = dirname(dir)) {
    const candidate = join(dir, 'shared', 'golden');
    if (existsSync(join(candidate, 'golden.json'))) return candidate;
    if (dirname(dir) === dir) break;
  }
  throw new Error(`no golden set: set BLIP2_GOLDEN_DIR or provide ${resolve(repoRoot, '../shared/golden')}`);
}

export interface Golden {
  dir: string;
  /** golden.json["config"] (LAVIS's names) as the model's config (Hugging Face's names). */
  config: Blip2Config;
  json: {
    config: Parameters<typeof blip2ConfigFromLavis>[0];
    inputs: {
      batch: number;
      input_ids: number[][];
      attention_mask: number[][];
      itm_neg_image_idx: number[];
      itm_neg_text_idx: number[];
      multirank: { world_size: number; per_rank_batch: number; rank_slices: [number, number][]; input_ids: number[][]; attention_mask: number[][] };
    };
    losses: Record<string, number>;
    trainable_stage1: string[];
    itc_params: string[];
    param_manifest: Record<string, { shape: number[]; trainable: boolean; lavis_name: string }>;
    tolerances: { float32_forward: { rtol: number; atol: number }; float32_losses: { rtol: number; atol: number }; fp16_backbone_outputs: { rtol: number; atol: number } };
  };
  file(name: string): Map<string, SafeTensor>;
  path(name: string): string;
}

let cached: Golden | undefined;
export function golden(): Golden {
  if (cached) return cached;
  const dir = goldenDir();
  const files = new Map<string, Map<string, SafeTensor>>();
  const json = JSON.parse(readFileSync(join(dir, 'golden.json'), 'utf8')) as Golden['json'];
  cached = {
    dir,
    config: blip2ConfigFromLavis(json.config),
    json,
    path: (name) => join(dir, name),
    file(name) {
      if (!files.has(name)) files.set(name, readSafetensors(join(dir, name)).tensors);
      return files.get(name)!;
    },
  };
  return cached;
}

export function get(file: Map<string, SafeTensor>, name: string): SafeTensor {
  const t = file.get(name);
  if (!t) throw new Error(`golden tensor "${name}" missing`);
  return t;
}

export const floatTensor = (t: SafeTensor) => tf.tensor(toFloat32(t), t.shape, 'float32');
export const intTensor = (t: SafeTensor) => tf.tensor(toInt32(t), t.shape, 'int32');

/** Elementwise |a-b| <= atol + rtol·|b|; reports the worst element. */
export function expectClose(name: string, actual: ArrayLike<number>, ref: ArrayLike<number>, tol: { atol: number; rtol: number }): void {
  expect(actual.length, `${name}: length`).toBe(ref.length);
  let worst = -Infinity;
  let at = -1;
  for (let i = 0; i < ref.length; i++) {
    const excess = Math.abs(actual[i]! - ref[i]!) - (tol.atol + tol.rtol * Math.abs(ref[i]!));
    if (!(excess <= worst)) {
      worst = excess;
      at = i;
    }
  }
  expect(worst <= 0, `${name}: element ${at} is ${actual[at]} vs ${ref[at]} (atol ${tol.atol}, rtol ${tol.rtol})`).toBe(true);
}

/**
 * Gradient comparison of the README: elementwise |a-b| <= 1e-6 + 1e-3·max|b|, and relative L2 error <= 1e-4 except for
 * attention key biases (exact gradient 0; stored values are rounding noise), which get the absolute bound only.
 */
export function expectGradClose(name: string, actual: ArrayLike<number>, ref: ArrayLike<number>): void {
  expect(actual.length, `${name}: length`).toBe(ref.length);
  let maxRef = 0;
  for (let i = 0; i < ref.length; i++) maxRef = Math.max(maxRef, Math.abs(ref[i]!));
  const bound = 1e-6 + 1e-3 * maxRef;
  let worst = 0;
  let at = 0;
  let diff2 = 0;
  let ref2 = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(actual[i]! - ref[i]!);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
    diff2 += d * d;
    ref2 += ref[i]! * ref[i]!;
  }
  expect(worst <= bound, `${name}: element ${at} is ${actual[at]} vs ${ref[at]} (bound ${bound})`).toBe(true);
  const keyBias = /\.attention\.key\.bias$/.test(name);
  if (!keyBias && ref2 > 0) {
    const relL2 = Math.sqrt(diff2 / ref2);
    expect(relL2 <= 1e-4, `${name}: relative L2 error ${relL2} > 1e-4`).toBe(true);
  }
}

/** Loss comparison: relative tolerance from golden.json (plus its atol). */
export function expectLoss(name: string, actual: number, ref: number, tol: { rtol: number; atol: number }): void {
  expect(Math.abs(actual - ref) <= tol.atol + tol.rtol * Math.abs(ref), `${name}: ${actual} vs ${ref}`).toBe(true);
}

/** Tensors alive now; compare after disposing a model function's results to check it leaks nothing. */
export const liveTensors = () => tf.memory().numTensors;
