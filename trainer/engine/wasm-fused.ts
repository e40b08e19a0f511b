/**
 * Fused kernels for tfjs `wasm`, computed by the native addon (native/kernels.cc) on the tensors' heap memory:
 * GELU, LayerNorm, the softmax gradient and label-smoothed cross-entropy, each forward and backward as one
 * vectorised, multi-threaded pass. Composed of tfjs ops, the same functions were chains of 4–12 single-threaded
 * wasm kernels with an intermediate tensor between each two (GELU alone: erf, exp, five multiplies, two adds);
 * those chains were over half of a small Q-Former step's time.
 *
 * The Add kernel of the same backend goes to the addon too, for the broadcasts that a model makes (biases).
 *
 * `installWasmFused(blas)` registers the kernels (and the Softmax gradient that uses one); `fusedOps()` returns the
 * differentiable ops built on them, or undefined when they are not installed (another engine, or no addon), in
 * which case ops.ts composes the same functions from tfjs ops.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { NativeBlas } from './native-blas';
import { dataOf, heapF32, heapI32, replaceWasmKernel, type WasmBackend } from './wasm-backend';
import { KernelInputError, KernelUnavailableError } from './errors';

const size = (shape: number[]) => shape.reduce((p, d) => p * d, 1);
const NO_WEIGHTS = new Float32Array(0);

/** Float32 views of tensors on the current heap (take them after the last `makeOutput`: it may grow the heap). */
function views(backend: WasmBackend, ...ts: tf.TensorInfo[]): Float32Array[] {
  const heap = heapF32(backend);
  return ts.map((t) => {
    const at = dataOf(backend, t).memoryOffset / 4;
    return heap.subarray(at, at + size(t.shape));
  });
}

function int32View(backend: WasmBackend, t: tf.TensorInfo): Int32Array {
  const at = dataOf(backend, t).memoryOffset / 4;
  return heapI32(backend).subarray(at, at + size(t.shape));
}

function expectDtype(kernel: string, name: string, t: tf.TensorInfo, dtype: tf.DataType): void {
  if (t.dtype !== dtype) throw new KernelInputError(`${kernel}: ${name} must be ${dtype}, got ${t.dtype}`);
}

function lastAxis(shape: number[]): { rows: number; cols: number } {
  const cols = shape[shape.length - 1] ?? 1;
  return { rows: cols === 0 ? 0 : size(shape) / cols, cols };
}

let native: NativeBlas | undefined;

function kernels(blas: NativeBlas): tf.KernelConfig[] {
  const k = (kernelName: string, kernelFunc: (inputs: tf.NamedTensorInfoMap, backend: WasmBackend, attrs: tf.NamedAttrMap) => tf.TensorInfo | tf.TensorInfo[]): tf.KernelConfig => ({
    kernelName,
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend, attrs }) => kernelFunc(inputs as tf.NamedTensorInfoMap, backend as WasmBackend, attrs ?? {}),
  });
  /** Layout of a keys/values tensor: [B, Sk, H] (heads are column blocks) or [B, n, Sk, d] (split already). */
  const kvLayout = (t: tf.TensorInfo, heads: number, d: number) => {
    if (t.shape.length === 3) {
      const [b, sk, h] = t.shape as [number, number, number];
      return { b, sk, ld: h, outer: sk * h, inner: d };
    }
    const [b, , sk] = t.shape as [number, number, number, number];
    return { b, sk, ld: d, outer: heads * sk * d, inner: sk * d };
  };
  const headDims = (q: tf.TensorInfo, heads: number) => {
    const [b, sq, h] = q.shape as [number, number, number];
    return { b, sq, h, d: h / heads };
  };
  return [
    // scores [B,n,Sq,Sk] = alpha·q_h·k_hᵀ per batch and head
    k('Blip2HeadScores', ({ q, k: key }, backend, attrs) => {
      const heads = attrs.heads as number;
      const { b, sq, h, d } = headDims(q!, heads);
      const kl = kvLayout(key!, heads, d);
      const s = backend.makeOutput([b, heads, sq, kl.sk], 'float32');
      const [qv, kv, sv] = views(backend, q!, key!, s);
      blas.sgemmHeads(qv!, kv!, sv!, b, heads, sq, kl.sk, d, false, true, attrs.alpha as number, h, kl.ld, kl.sk, sq * h, d, kl.outer, kl.inner, heads * sq * kl.sk, sq * kl.sk);
      return s;
    }),
    // context [B,Sq,H] (head h in columns h·d…) = p_h·v_h
    k('Blip2HeadContext', ({ p, v }, backend, attrs) => {
      const heads = attrs.heads as number;
      const [b, , sq, sk] = p!.shape as [number, number, number, number];
      const d = v!.shape.length === 3 ? v!.shape[2]! / heads : v!.shape[3]!;
      const vLay = kvLayout(v!, heads, d);
      const c = backend.makeOutput([b, sq, heads * d], 'float32');
      const [pv, vv, cv] = views(backend, p!, v!, c);
      blas.sgemmHeads(pv!, vv!, cv!, b, heads, sq, d, sk, false, false, 1, sk, vLay.ld, heads * d, heads * sq * sk, sq * sk, vLay.outer, vLay.inner, sq * heads * d, d);
      return c;
    }),
    k('Blip2HeadScoresGrad', ({ ds, q, k: key }, backend, attrs) => {
      const heads = attrs.heads as number;
      const alpha = attrs.alpha as number;
      const { b, sq, h, d } = headDims(q!, heads);
      const kl = kvLayout(key!, heads, d);
      const dq = backend.makeOutput([...q!.shape], 'float32');
      const dk = backend.makeOutput([...key!.shape], 'float32');
      const [dsv, qv, kv, dqv, dkv] = views(backend, ds!, q!, key!, dq, dk);
      const sOuter = heads * sq * kl.sk;
      const sInner = sq * kl.sk;
      blas.sgemmHeads(dsv!, kv!, dqv!, b, heads, sq, d, kl.sk, false, false, alpha, kl.sk, kl.ld, h, sOuter, sInner, kl.outer, kl.inner, sq * h, d);
      blas.sgemmHeads(dsv!, qv!, dkv!, b, heads, kl.sk, d, sq, true, false, alpha, kl.sk, h, kl.ld, sOuter, sInner, sq * h, d, kl.outer, kl.inner);
      return [dq, dk];
    }),
    k('Blip2HeadContextGrad', ({ dc, p, v }, backend, attrs) => {
      const heads = attrs.heads as number;
      const [b, , sq, sk] = p!.shape as [number, number, number, number];
      const d = v!.shape.length === 3 ? v!.shape[2]! / heads : v!.shape[3]!;
      const vl = kvLayout(v!, heads, d);
      const h = heads * d;
      const dp = backend.makeOutput([...p!.shape], 'float32');
      const dv = backend.makeOutput([...v!.shape], 'float32');
      const [dcv, pv, vv, dpv, dvv] = views(backend, dc!, p!, v!, dp, dv);
      const pOuter = heads * sq * sk;
      const pInner = sq * sk;
      blas.sgemmHeads(dcv!, vv!, dpv!, b, heads, sq, sk, d, false, true, 1, h, vl.ld, sk, sq * h, d, vl.outer, vl.inner, pOuter, pInner);
      blas.sgemmHeads(pv!, dcv!, dvv!, b, heads, sk, d, sq, true, false, 1, sk, h, vl.ld, pOuter, pInner, sq * h, d, vl.outer, vl.inner);
      return [dp, dv];
    }),
    k('Blip2Gelu', ({ x }, backend) => {
      expectDtype('Blip2Gelu', 'x', x!, 'float32');
      const y = backend.makeOutput([...x!.shape], 'float32');
      const [xv, yv] = views(backend, x!, y);
      blas.geluForward(xv!, yv!, size(x!.shape));
      return y;
    }),
    k('Blip2GeluGrad', ({ x, dy }, backend) => {
      const dx = backend.makeOutput([...x!.shape], 'float32');
      const [xv, dyv, dxv] = views(backend, x!, dy!, dx);
      blas.geluBackward(xv!, dyv!, dxv!, size(x!.shape));
      return dx;
    }),
    k('Blip2LayerNorm', ({ x, gamma, beta }, backend, attrs) => {
      expectDtype('Blip2LayerNorm', 'x', x!, 'float32');
      const { rows, cols } = lastAxis(x!.shape);
      if (gamma!.shape.length !== 1 || gamma!.shape[0] !== cols || beta!.shape.length !== 1 || beta!.shape[0] !== cols) {
        throw new KernelInputError(`Blip2LayerNorm: gamma [${gamma!.shape}] and beta [${beta!.shape}] must be [${cols}] for x [${x!.shape}]`);
      }
      const y = backend.makeOutput([...x!.shape], 'float32');
      const xhat = backend.makeOutput([...x!.shape], 'float32');
      const rstd = backend.makeOutput([rows], 'float32');
      const [xv, gv, bv, yv, hv, rv] = views(backend, x!, gamma!, beta!, y, xhat, rstd);
      blas.layerNormForward(xv!, gv!, bv!, yv!, hv!, rv!, rows, cols, attrs.eps as number);
      return [y, xhat, rstd];
    }),
    k('Blip2LayerNormGrad', ({ dy, xhat, rstd, gamma }, backend) => {
      const { rows, cols } = lastAxis(xhat!.shape);
      const dx = backend.makeOutput([...xhat!.shape], 'float32');
      const dgamma = backend.makeOutput([cols], 'float32');
      const dbeta = backend.makeOutput([cols], 'float32');
      const [dyv, hv, rv, gv, dxv, dgv, dbv] = views(backend, dy!, xhat!, rstd!, gamma!, dx, dgamma, dbeta);
      blas.layerNormBackward(dyv!, hv!, rv!, gv!, dxv!, dgv!, dbv!, rows, cols);
      return [dx, dgamma, dbeta];
    }),
    k('Blip2SoftmaxGrad', ({ y, dy }, backend) => {
      const { rows, cols } = lastAxis(y!.shape);
      const dx = backend.makeOutput([...y!.shape], 'float32');
      const [yv, dyv, dxv] = views(backend, y!, dy!, dx);
      blas.softmaxBackward(yv!, dyv!, dxv!, rows, cols);
      return dx;
    }),
    k('Blip2CrossEntropy', ({ logits, targets, weights }, backend, attrs) => {
      expectDtype('Blip2CrossEntropy', 'logits', logits!, 'float32');
      expectDtype('Blip2CrossEntropy', 'targets', targets!, 'int32');
      const [rows, cols] = logits!.shape as [number, number];
      if (logits!.shape.length !== 2 || targets!.shape.length !== 1 || targets!.shape[0] !== rows) {
        throw new KernelInputError(`Blip2CrossEntropy: logits [${logits!.shape}] must be [N, C] and targets [${targets!.shape}] [N]`);
      }
      const loss = backend.makeOutput([rows], 'float32');
      const [lv, lossv] = views(backend, logits!, loss);
      const wv = weights ? views(backend, weights)[0]! : NO_WEIGHTS;
      blas.crossEntropyForward(lv!, int32View(backend, targets!), wv, lossv!, rows, cols, attrs.smoothing as number);
      return loss;
    }),
    k('Blip2CrossEntropyGrad', ({ logits, targets, weights, dloss }, backend, attrs) => {
      const [rows, cols] = logits!.shape as [number, number];
      const dlogits = backend.makeOutput([rows, cols], 'float32');
      const [lv, dlv, dv] = views(backend, logits!, dloss!, dlogits);
      const wv = weights ? views(backend, weights)[0]! : NO_WEIGHTS;
      blas.crossEntropyBackward(lv!, int32View(backend, targets!), wv, dlv!, dv!, rows, cols, attrs.smoothing as number);
      return dlogits;
    }),
  ];
}

const run = (name: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap = {}) =>
  tf.engine().runKernel(name, inputs as never, attrs) as tf.Tensor | tf.Tensor[];

export interface FusedOps {
  /**
   * Multi-head attention on [B, S, H] tensors: softmax(alpha·q_h·k_hᵀ + mask)·v_h per head, heads as column blocks
   * (no split/merge transposes). q [B,Sq,H]; k, v [B,Sk,H] or split [B,n,Sk,d]; mask broadcastable to [B,n,Sq,Sk]
   * (a constant: no gradient). Returns [B,Sq,H].
   */
  attention(q: tf.Tensor3D, k: tf.Tensor, v: tf.Tensor, heads: number, alpha: number, mask?: tf.Tensor): tf.Tensor3D;
  /** torch.nn.Linear on rows: x [N, in], w [out, in], b [out] -> x·wᵀ + b, one GEMM writing over the bias. */
  linear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D;
  /** 0.5·x·(1 + erf(x/√2)), exact-erf GELU. */
  gelu(x: tf.Tensor): tf.Tensor;
  /** LayerNorm over the last axis (biased variance, eps inside the root); gamma, beta [C]. */
  layerNorm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, eps: number): tf.Tensor;
  /**
   * Per-row torch cross_entropy with label smoothing ε: (1-ε)·(-log p_target) + ε·mean_c(-log p_c), times the row
   * weight. logits [N,C] float32, targets [N] int32, weights [N] (constants: no gradient flows to them).
   */
  crossEntropyRows(logits: tf.Tensor2D, targets: tf.Tensor1D, smoothing: number, weights?: tf.Tensor1D): tf.Tensor1D;
}

let ops: FusedOps | undefined;

function makeOps(): FusedOps {
  const gelu = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x]);
    return { value: run('Blip2Gelu', { x }) as tf.Tensor, gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => run('Blip2GeluGrad', { x: saved[0]!, dy }) as tf.Tensor };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

  const layerNorms = new Map<number, (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor>();
  const layerNormOf = (eps: number) => {
    let op = layerNorms.get(eps);
    if (op) return op;
    op = tf.customGrad(((x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, save: tf.GradSaveFunc) => {
      const [y, xhat, rstd] = run('Blip2LayerNorm', { x, gamma, beta }, { eps }) as tf.Tensor[];
      save([xhat!, rstd!, gamma]);
      tf.dispose([xhat!, rstd!]); // saved copies share the data
      return {
        value: y!,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [xh, rs, gm] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
          return run('Blip2LayerNormGrad', { dy, xhat: xh, rstd: rs, gamma: gm }) as tf.Tensor[];
        },
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor;
    layerNorms.set(eps, op);
    return op;
  };

  const crossEntropyRows = (logits: tf.Tensor2D, targets: tf.Tensor1D, smoothing: number, weights?: tf.Tensor1D) => {
    if (targets.dtype !== 'int32') throw new KernelInputError(`crossEntropyRows: targets must be int32, got ${targets.dtype}`);
    const op = tf.customGrad(((lg: tf.Tensor, save: tf.GradSaveFunc) => {
      const inputs: tf.NamedTensorMap = weights ? { logits: lg, targets, weights } : { logits: lg, targets };
      const loss = run('Blip2CrossEntropy', inputs, { smoothing }) as tf.Tensor;
      // The targets and weights are saved too: the forward pass's tensors are gone when backward runs.
      save(weights ? [lg, targets, weights] : [lg, targets]);
      return {
        value: loss,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [l, t, w] = saved;
          const gradInputs: tf.NamedTensorMap = w ? { logits: l!, targets: t!, weights: w, dloss: dy } : { logits: l!, targets: t!, dloss: dy };
          return run('Blip2CrossEntropyGrad', gradInputs, { smoothing }) as tf.Tensor;
        },
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor1D;
    return op(logits);
  };

  // The gradient is the composed one's: dx = dy·w, dw = dyᵀ·x (the BatchMatMul gradient's GEMMs), db = Σ_rows dy.
  const linear = tf.customGrad(((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x, w]);
    const y = run('_FusedMatMul', { a: x, b: w, bias: b }, { transposeA: false, transposeB: true, activation: 'linear' }) as tf.Tensor;
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, ws] = saved as [tf.Tensor, tf.Tensor];
        return [tf.matMul(dy, ws), tf.matMul(dy, xs, true, false), tf.sum(dy, 0)];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as FusedOps['linear'];

  const attention = (q: tf.Tensor3D, k: tf.Tensor, v: tf.Tensor, heads: number, alpha: number, mask?: tf.Tensor) => {
    const op = tf.customGrad(((qi: tf.Tensor, ki: tf.Tensor, vi: tf.Tensor, save: tf.GradSaveFunc) => {
      const scores = run('Blip2HeadScores', { q: qi, k: ki }, { heads, alpha }) as tf.Tensor;
      const masked = mask ? tf.add(scores, mask) : scores;
      const probs = tf.softmax(masked);
      tf.dispose([scores, masked]);
      const ctx = run('Blip2HeadContext', { p: probs, v: vi }, { heads }) as tf.Tensor;
      save([qi, ki, vi, probs]);
      probs.dispose();
      return {
        value: ctx,
        gradFunc: (dc: tf.Tensor, saved: tf.Tensor[]) => {
          const [qs, ks, vs, ps] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
          const [dp, dv] = run('Blip2HeadContextGrad', { dc, p: ps, v: vs }, { heads }) as tf.Tensor[];
          const ds = run('Blip2SoftmaxGrad', { y: ps, dy: dp! }) as tf.Tensor;
          const [dq, dk] = run('Blip2HeadScoresGrad', { ds, q: qs, k: ks }, { heads, alpha }) as tf.Tensor[];
          return [dq!, dk!, dv!];
        },
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor3D;
    return op(q, k, v);
  };

  return { attention, linear, gelu, layerNorm: (x, gamma, beta, eps) => layerNormOf(eps)(x, gamma, beta), crossEntropyRows };
}

/**
 * Add on the addon when one input is the output's shape and the other equals its trailing axes (a bias [C] or
 * [1, C], the query tokens [1, Q, H]) or is the same shape: the stock wasm kernel walks broadcasts element by
 * element through index arithmetic (0.7 ms for a [256, 256] + [256] bias). Same float additions, same results.
 */
function addKernel(blas: NativeBlas, stock: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const backend = args.backend as WasmBackend;
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return stock.kernelFunc(args);
    const outShape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const [big, small] = tf.util.arraysEqual(a.shape, outShape) ? [a, b] : tf.util.arraysEqual(b.shape, outShape) ? [b, a] : [];
    if (!big || !small) return stock.kernelFunc(args);
    const n = size(outShape);
    if (n === 0) return stock.kernelFunc(args);
    // small, left-padded with 1s to the output's rank, as [P, 1, S] against the output's [P, M, S]: axes equal to the
    // output's (prefix P), then axes of size 1 (broadcast, M), then axes equal again (suffix S). Covers biases
    // ([N, C] + [C]), the query tokens and attention masks ([B, n, Sq, Sk] + [B, 1, Sq, Sk] or [B, 1, 1, Sk]).
    const rank = outShape.length;
    const sm = [...new Array<number>(rank - small.shape.length).fill(1), ...small.shape];
    let i = 0;
    while (i < rank && sm[i] === outShape[i]) i++;
    let j = i;
    while (j < rank && sm[j] === 1) j++;
    if (sm.slice(j).some((d, t) => d !== outShape[j + t])) return stock.kernelFunc(args);
    const prefix = size(outShape.slice(0, i));
    const middle = size(outShape.slice(i, j));
    const suffix = size(outShape.slice(j));
    if (middle === 1 && prefix > 1) {
      // same shape (or only size-1 axes differ): one pass
      const out = backend.makeOutput([...outShape], 'float32');
      const [bigV, smallV, outV] = views(backend, big, small, out);
      blas.addRows(bigV!, smallV!, outV!, 1, n);
      return out;
    }
    if (suffix === 1 || prefix * middle * suffix !== n) return stock.kernelFunc(args);
    const out = backend.makeOutput([...outShape], 'float32');
    const [bigV, smallV, outV] = views(backend, big, small, out);
    const block = middle * suffix;
    for (let p = 0; p < prefix; p++) {
      blas.addRows(bigV!.subarray(p * block, (p + 1) * block), smallV!.subarray(p * suffix, (p + 1) * suffix), outV!.subarray(p * block, (p + 1) * block), middle, suffix);
    }
    return out;
  };
}

/**
 * GatherV2 of rows (axis 0, no batch dims, float32 x, int32 indices) on the addon: one row copy each. The stock
 * kernel walks every element through stride arithmetic (8 ms for 768 rows of a [30523, 256] embedding table).
 */
function gatherKernel(blas: NativeBlas, stock: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const { axis, batchDims } = args.attrs as unknown as { axis: number; batchDims: number };
    const backend = args.backend as WasmBackend;
    if (x.dtype !== 'float32' || indices.dtype !== 'int32' || x.shape.length < 1 || (axis !== 0 && axis !== -x.shape.length) || (batchDims ?? 0) !== 0) {
      return stock.kernelFunc(args);
    }
    const rows = x.shape[0]!;
    const rest = x.shape.slice(1);
    const cols = size(rest);
    const out = backend.makeOutput([...indices.shape, ...rest], 'float32');
    if (size(out.shape) === 0) return out;
    const [xv, outv] = views(backend, x, out);
    blas.gatherRows(xv!, int32View(backend, indices), outv!, rows, cols);
    return out;
  };
}

/** Softmax over the last axis (float32) on the addon; its exp gives exact zeros for masked keys. */
function softmaxKernel(blas: NativeBlas, stock: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const logits = args.inputs.logits!;
    const { dim } = args.attrs as unknown as { dim: number };
    const backend = args.backend as WasmBackend;
    if (logits.dtype !== 'float32' || (dim !== -1 && dim !== logits.shape.length - 1) || size(logits.shape) === 0) return stock.kernelFunc(args);
    const { rows, cols } = lastAxis(logits.shape);
    const out = backend.makeOutput([...logits.shape], 'float32');
    const [xv, yv] = views(backend, logits, out);
    blas.softmaxForward(xv!, yv!, rows, cols);
    return out;
  };
}

/** Registers the fused kernels on `wasm` and the Softmax gradient that uses one. */
export function installWasmFused(blas: NativeBlas): void {
  if (native) return;
  native = blas;
  for (const config of kernels(blas)) tf.registerKernel(config);
  replaceWasmKernel(tf.Add, (stock) => addKernel(blas, stock));
  replaceWasmKernel(tf.Softmax, (stock) => softmaxKernel(blas, stock));
  replaceWasmKernel(tf.GatherV2, (stock) => gatherKernel(blas, stock));
  const stockSoftmaxGrad = tf.getGradient(tf.Softmax);
  tf.registerGradient({
    kernelName: tf.Softmax,
    outputsToSave: [true],
    gradFunc: (dy, saved, attrs) => {
      const [y] = saved as tf.Tensor[];
      const { dim } = attrs as unknown as { dim: number };
      const dyT = dy as tf.Tensor;
      if (tf.getBackend() === 'wasm' && (dim === -1 || dim === y!.rank - 1)) return { logits: () => run('Blip2SoftmaxGrad', { y: y!, dy: dyT }) as tf.Tensor };
      if (!stockSoftmaxGrad) throw new KernelUnavailableError('no Softmax gradient for a softmax over a non-last axis');
      return stockSoftmaxGrad.gradFunc(dy, saved, attrs);
    },
  });
  ops = makeOps();
}

/** The fused differentiable ops, when the engine installed their kernels and `wasm` is the current backend. */
export function fusedOps(): FusedOps | undefined {
  return ops && tf.getBackend() === 'wasm' ? ops : undefined;
}

/** Runs `f` with `fusedOps()` undefined, so that ops.ts composes the functions of tfjs ops (tests compare the two). */
export function withoutFusedOps<T>(f: () => T): T {
  const saved = ops;
  ops = undefined;
  try {
    return f();
  } finally {
    ops = saved;
  }
}
