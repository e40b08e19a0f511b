/**
 * Frozen weights held outside the tensor engine: one group of the manifest (the language model) kept as the raw
 * data of the file it came from — 16-bit for an F16 checkpoint (tfjs has no float16 tensor), 32-bit for F32 — in
 * JS memory, not in the 4 GiB wasm heap. Tensors exist only while a piece of the model runs: `frozenCall` widens a
 * piece's weights to float32 for its forward, frees them, and widens them again in the backward pass, where it
 * recomputes the piece's activations from its saved input (one piece's activations alive at a time, not all).
 */
import { narrowToF16, SafetensorsError, widenBf16, widenF16, type SafeTensor } from '../../common';
import { paramManifest, type Blip2Config, type ParamGroup } from './config';
import { tf, widenF16Into } from '../engine';
import { gradients } from '../engine';
import { ModelInputError } from './errors';
import { initStd, matchCheckpoint, type Params } from './params';

type Resident = { shape: number[]; f16?: Uint16Array; bf16?: Uint16Array; f32?: Float32Array };

/** Time and bytes spent widening resident data to float32 tensors (benchmarks report it as its own figure). */
export interface WideningCounters {
  ms: number;
  /** float32 bytes produced. */
  bytes: number;
  /** Widenings (one per piece per forward or backward). */
  count: number;
}

export class FrozenWeights {
  /** Running totals since construction or the last `resetCounters()`. */
  readonly widening: WideningCounters = { ms: 0, bytes: 0, count: 0 };
  /** Widen with the engine's native addon when it has one (F16C); false: in JS (the benchmark's baseline). */
  nativeWidening = true;

  private constructor(
    readonly group: ParamGroup,
    private readonly weights: Map<string, Resident>,
  ) {}

  /**
   * The `group` parameters of `config` from safetensors file(s). F16 and BF16 stay 16-bit; F32 stays 32-bit, or is
   * narrowed to F16 with `fp16` (LAVIS runs the frozen ViT and OPT in float16). The headers are matched first
   * (`matchCheckpoint`: every name of the group present with its shape, no name the model does not know), then only
   * the group's tensors are read.
   */
  static load(files: string | string[], config: Blip2Config, group: ParamGroup, options: { fp16?: boolean } = {}): FrozenWeights {
    const specs = paramManifest(config);
    const found = matchCheckpoint(files, config, [group]);
    const weights = new Map<string, Resident>();
    for (const spec of specs.filter((s) => s.group === group)) {
      const reader = found.get(spec.name)!;
      weights.set(spec.name, residentOf(reader.read(spec.name), spec.name, reader.path, options.fp16 ?? false));
    }
    return new FrozenWeights(group, weights);
  }

  /** The group from float32 tensors (e.g. `createParams(config, seed, {groups: [group]})`), narrowed to F16 when asked. */
  static async fromParams(params: Params, config: Blip2Config, group: ParamGroup, options: { fp16?: boolean } = {}): Promise<FrozenWeights> {
    const found = new Map<string, Resident>();
    for (const spec of paramManifest(config).filter((s) => s.group === group)) {
      const t = params.get(spec.name);
      if (!t) throw new ModelInputError(`frozen parameter "${spec.name}" is missing from the parameter set: load it from a checkpoint that holds it`);
      const values = (await t.data()) as Float32Array;
      found.set(spec.name, options.fp16 ? { shape: spec.shape, f16: narrowToF16(values) } : { shape: spec.shape, f32: Float32Array.from(values) });
    }
    return new FrozenWeights(group, found);
  }

  /**
   * Random F16 weights initialised as `createParams` does (N(0, `initStd`), zeros, ones), generated in JS memory without
   * going through the engine: what a benchmark of a model too large for the wasm heap needs. Deterministic in `seed`.
   */
  static random(config: Blip2Config, group: ParamGroup, seed: number): FrozenWeights {
    const found = new Map<string, Resident>();
    const normal = gaussian(seed);
    const chunk = new Float32Array(1 << 16);
    for (const spec of paramManifest(config).filter((s) => s.group === group)) {
      const n = spec.shape.reduce((a, b) => a * b, 1);
      const std = initStd(config, spec);
      const f16 = new Uint16Array(n);
      for (let begin = 0; begin < n; begin += chunk.length) {
        const len = Math.min(chunk.length, n - begin);
        for (let i = 0; i < len; i++) chunk[i] = spec.init === 'ones' ? 1 : spec.init === 'zeros' ? 0 : std * normal();
        f16.set(narrowToF16(chunk.subarray(0, len)), begin);
      }
      found.set(spec.name, { shape: spec.shape, f16 });
    }
    return new FrozenWeights(group, found);
  }

  /** Number of frozen scalars. */
  get paramCount(): number {
    let n = 0;
    for (const w of this.weights.values()) n += w.shape.reduce((a, b) => a * b, 1);
    return n;
  }

  /** Bytes the weights hold in JS memory (2 per parameter for an F16 checkpoint, 4 for F32). */
  get residentBytes(): number {
    let n = 0;
    for (const w of this.weights.values()) n += (w.f16 ?? w.bf16 ?? w.f32)!.byteLength;
    return n;
  }

  shape(name: string): number[] {
    return this.resident(name).shape;
  }

  resetCounters(): void {
    Object.assign(this.widening, { ms: 0, bytes: 0, count: 0 });
  }

  /**
   * The weights whose names start with one of `prefixes`, as float32 tensors (the caller disposes them). On the wasm
   * engine, whose tensors copy their values into its heap when made, 16-bit data is widened into one reused scratch
   * buffer (the size of the largest weight widened): a fresh 100 MB array costs more than the widening itself.
   */
  widen(prefixes: readonly string[]): Params {
    const t0 = performance.now();
    const out: Params = new Map();
    const reuse = tf.getBackend() === 'wasm';
    for (const [name, w] of this.weights) {
      if (!prefixes.some((p) => name.startsWith(p))) continue;
      let values = w.f32!;
      if (w.f16) {
        const buf = reuse ? this.scratchOf(w.f16.length) : new Float32Array(w.f16.length);
        values = this.nativeWidening && widenF16Into(w.f16, buf) ? buf : widenF16(w.f16, buf); // native (F16C) when the engine has its addon
      } else if (w.bf16) {
        values = widenBf16(w.bf16, reuse ? this.scratchOf(w.bf16.length) : new Float32Array(w.bf16.length));
      }
      out.set(name, tf.tensor(values, w.shape, 'float32'));
      this.widening.bytes += 4 * values.length;
    }
    this.widening.ms += performance.now() - t0;
    this.widening.count++;
    return out;
  }

  /** Rows `index` of the 2-D weight `name` ([rows, width]), widened: an embedding lookup without a tensor of the table. */
  rows(name: string, index: ArrayLike<number>): Float32Array {
    const w = this.resident(name);
    const [count, width] = w.shape as [number, number];
    const out = new Float32Array(index.length * width);
    for (let r = 0; r < index.length; r++) {
      const row = index[r]!;
      if (!Number.isInteger(row) || row < 0 || row >= count) throw new ModelInputError(`${name}: row ${row} is outside 0…${count - 1} (a token id or position beyond the table)`);
      if (w.f16) widenF16(w.f16.subarray(row * width, (row + 1) * width), out.subarray(r * width, (r + 1) * width));
      else if (w.bf16) widenBf16(w.bf16.subarray(row * width, (row + 1) * width), out.subarray(r * width, (r + 1) * width));
      else out.set(w.f32!.subarray(row * width, (row + 1) * width), r * width);
    }
    return out;
  }

  private scratch: Float32Array<ArrayBuffer> = new Float32Array(0);

  /** The first n floats of the scratch buffer, grown when too small. */
  private scratchOf(n: number): Float32Array<ArrayBuffer> {
    if (this.scratch.length < n) this.scratch = new Float32Array(n);
    return this.scratch.subarray(0, n);
  }

  private resident(name: string): Resident {
    const w = this.weights.get(name);
    if (!w) throw new ModelInputError(`frozen parameter "${name}" is not in this weight set`);
    return w;
  }
}

/**
 * `fn(weights, x)` on the frozen weights named by `prefixes`, differentiable in x only. Forward: the weights are
 * widened, `fn` runs without recording, the weights are freed; x is saved, with the `extra` tensors `fn` reads
 * (a mask).
 * Backward: the weights are widened again and `fn` re-runs from the saved x under a tape, whose backward gives
 * dx (no gradient for the weights: they are frozen). The outer backward must be `gradients` (engine/gradients.ts):
 * its walk holds its tape itself, so the tape this backward starts does not disturb it (tfjs's `engine.gradients`
 * reads the engine's tape again after its walk).
 */
export function frozenCall(
  weights: FrozenWeights, prefixes: readonly string[], fn: (w: Params, x: tf.Tensor, extra: tf.Tensor[]) => tf.Tensor, x: tf.Tensor, extra: tf.Tensor[] = [],
): tf.Tensor {
  const op = tf.customGrad(((input: tf.Tensor, save: tf.GradSaveFunc) => {
    const y = withWidened(weights, prefixes, (w) => fn(w, input, extra));
    save([input, ...extra]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        // The forward's tensors are gone by now (its scope ended): only the saved copies are read.
        const [xs, ...savedExtra] = saved as [tf.Tensor, ...tf.Tensor[]];
        return withWidened(weights, prefixes, (w) => {
          // Vector-Jacobian product: d/dx Σ fn(x)·dy.
          const r = gradients(() => tf.sum(tf.mul(fn(w, xs, savedExtra), dy)), [xs]);
          r.value.dispose();
          return r.grads[0] ?? tf.zerosLike(xs);
        });
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return op(x);
}

function withWidened<T extends tf.Tensor>(weights: FrozenWeights, prefixes: readonly string[], f: (w: Params) => T): T {
  const w = weights.widen(prefixes);
  try {
    return tf.tidy(() => f(w));
  } finally {
    for (const t of w.values()) t.dispose();
  }
}

function residentOf(t: SafeTensor, name: string, path: string, fp16: boolean): Resident {
  if (t.dtype === 'F16') return { shape: t.shape, f16: t.data as Uint16Array };
  if (t.dtype === 'BF16') return { shape: t.shape, bf16: t.data as Uint16Array };
  if (t.dtype === 'F32') return fp16 ? { shape: t.shape, f16: narrowToF16(t.data as Float32Array) } : { shape: t.shape, f32: t.data as Float32Array };
  throw new SafetensorsError(`${path}: tensor "${name}": dtype ${t.dtype} not supported for frozen weights (F16, BF16 or F32)`);
}

/** Standard normal draws (Box–Muller over a 32-bit xorshift), deterministic in `seed`. */
function gaussian(seed: number): () => number {
  let s = (seed * 2654435761 + 1) >>> 0 || 1;
  const uniform = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  let spare: number | undefined;
  return () => {
    if (spare !== undefined) {
      const v = spare;
      spare = undefined;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const a = 2 * Math.PI * uniform();
    spare = r * Math.sin(a);
    return r * Math.cos(a);
  };
}
