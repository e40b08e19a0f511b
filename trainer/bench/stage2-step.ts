/**
 * `npm run bench:step -- --stage 2 --preset small --batch 8`: one stage-2 training step (forward and backward of the
 * LM loss through the frozen 16-bit OPT into the Q-Former's query path and `language_projection`), fed a fixed
 * random ViT output [B, 257, Dv] (the frozen ViT is excluded) and captions of up to `--text-len` LM tokens. The LM
 * weights are random F16 made in JS memory. Prints the median step, the widening cost (FP16 → FP32, per step and
 * per layer) as its own figure, a matmul GFLOP/s probe of the LM's FFN shape, the step's model FLOPs utilisation,
 * the high-water marks of the wasm heap and of the process RSS, and as its last line `step_ms <median>`.
 */
import {
  createParams,
  disposeParams,
  OptLanguageModel,
  presetConfig,
  stage2Step,
  trainableCount,
  visionSeqLen,
  type Blip2Config,
} from '../model';
import { engineName, tf, WasmHeapExhaustedError } from '../engine';

export interface Stage2BenchOptions {
  preset: string;
  batch: number;
  textLen: number;
  iters: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

/** Size of the wasm heap now (it only grows, so this is its high-water mark); undefined off the wasm engine. */
function wasmHeapBytes(): number | undefined {
  const backend = tf.backend() as unknown as { wasm?: { wasmMemory?: { buffer: ArrayBuffer }; HEAPU8?: Uint8Array } };
  return (backend.wasm?.wasmMemory?.buffer ?? backend.wasm?.HEAPU8?.buffer)?.byteLength;
}

/**
 * Matmul FLOPs of one step counted from the shapes (2·m·n·k per product), split into the model's own work and the
 * frozen layers' recomputation in the backward. Q-Former: forward, then dx and dW (3×); LM layers: forward and dx
 * (2×), plus the recomputed forward; LM head: forward and dx on the target rows.
 */
function stepFlops(config: Blip2Config, B: number, T: number, targetRows: number): { model: number; recompute: number } {
  const q = config.qformer_config;
  const o = config.text_config;
  const Q = config.num_query_tokens;
  const P = visionSeqLen(config.vision_config);
  const Dv = config.vision_config.hidden_size;
  const H = q.hidden_size;
  let qformer = 0;
  for (let i = 0; i < q.num_hidden_layers; i++) {
    qformer += 2 * B * Q * H * H * 4 + 2 * 2 * B * Q * Q * H + 2 * 2 * B * Q * H * q.intermediate_size;
    if (i % q.cross_attention_frequency === 0) qformer += 2 * B * Q * H * H * 2 + 2 * 2 * B * P * Dv * H + 2 * 2 * B * Q * P * H;
  }
  qformer += 2 * B * Q * H * o.hidden_size; // language_projection
  const S = Q + T;
  const D = o.hidden_size;
  const lmLayers = o.num_hidden_layers * (2 * B * S * D * D * 4 + 2 * 2 * B * S * S * D + 2 * 2 * B * S * D * o.ffn_dim);
  const head = 2 * targetRows * D * o.vocab_size;
  return { model: 3 * qformer + 2 * lmLayers + 2 * head, recompute: lmLayers };
}

/** Fixed inputs: a random ViT output; captions BOS, words, "\n", right padded, of seeded lengths between 8 and T. */
function stage2Inputs(config: Blip2Config, B: number, T: number) {
  const o = config.text_config;
  const P = visionSeqLen(config.vision_config);
  const Dv = config.vision_config.hidden_size;
  const visionHidden = tf.randomNormal([B, P, Dv], 0, 1, 'float32', 1) as tf.Tensor3D;
  let s = 12345;
  const rand = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
  const ids: number[][] = [];
  const mask: number[][] = [];
  for (let i = 0; i < B; i++) {
    const len = Math.min(T, 8 + Math.floor(rand() * (T - 7)));
    ids.push(Array.from({ length: T }, (_, j) => (j === 0 ? o.bos_token_id : j === len - 1 ? config.lavis_config.newline_token_id : j < len ? 4 + Math.floor(rand() * (o.vocab_size - 4)) : o.pad_token_id)));
    mask.push(Array.from({ length: T }, (_, j) => (j < len ? 1 : 0)));
  }
  const optInputIds = tf.tensor2d(ids, [B, T], 'int32');
  const optAttentionMask = tf.tensor2d(mask, [B, T], 'int32');
  return { visionHidden, optInputIds, optAttentionMask };
}

/**
 * `--batch max`: one step at batches `step`, 2·`step`, … (the LM made once) until the wasm heap is exhausted or
 * `limit` is reached; prints each batch's step time and heap high-water, then the largest batch that fits.
 */
export async function largestStage2Batch(opts: { preset: string; textLen: number; step: number; limit: number }): Promise<void> {
  const config = presetConfig(opts.preset);
  const params = createParams(config, 0, { stage: 2 });
  const lm = OptLanguageModel.random(config, 1);
  console.log(`engine ${engineName()}; preset ${opts.preset} stage 2: the largest batch (steps of ${opts.step}, up to ${opts.limit}) whose step fits the wasm heap`);
  let fits = 0;
  for (let B = opts.step; B <= opts.limit; B += opts.step) {
    const inputs = stage2Inputs(config, B, opts.textLen);
    try {
      const t0 = performance.now();
      const r = stage2Step(params, lm, inputs);
      for (const g of r.grads.values()) g.dataSync();
      r.dispose();
      const heap = wasmHeapBytes();
      console.log(`batch ${B}: fits; one step ${(performance.now() - t0).toFixed(0)} ms; wasm heap high-water ${heap === undefined ? 'n/a' : mib(heap)}`);
      fits = B;
    } catch (e) {
      if (!(e instanceof WasmHeapExhaustedError)) throw e;
      console.log(`batch ${B}: does not fit (${e.message})`);
      break;
    } finally {
      for (const t of Object.values(inputs)) t.dispose();
    }
  }
  console.log(`largest batch that fits: ${fits}${fits + opts.step > opts.limit ? ` (--batch-limit ${opts.limit} reached: larger ones not tried)` : ''}`);
  console.log(`batch_max ${fits}`);
}

export async function benchStage2(opts: Stage2BenchOptions): Promise<void> {
  const { batch: B, textLen: T, iters } = opts;
  const config = presetConfig(opts.preset);
  const o = config.text_config;
  const P = visionSeqLen(config.vision_config);
  const Dv = config.vision_config.hidden_size;

  const params = createParams(config, 0, { stage: 2 });
  const lm = OptLanguageModel.random(config, 1);
  const inputs = stage2Inputs(config, B, T);
  const { visionHidden, optInputIds, optAttentionMask } = inputs;

  console.log(
    `engine ${engineName()}; preset ${opts.preset} stage 2: Q-Former ${config.qformer_config.num_hidden_layers} layers × ${config.qformer_config.hidden_size}, ` +
      `${config.num_query_tokens} queries, image ${P}×${Dv}; LM ${o.num_hidden_layers} layers × ${o.hidden_size} (FFN ${o.ffn_dim}, vocab ${o.vocab_size}), ` +
      `${lm.weights.paramCount.toLocaleString('en-US')} frozen parameters resident in ${mib(lm.weights.residentBytes)} (${(lm.weights.residentBytes / lm.weights.paramCount).toFixed(1)} bytes each); ` +
      `batch ${B}, text ${T}; ${trainableCount(config, 2).toLocaleString('en-US')} trainable parameters`,
  );

  // Matmul probe: the LM's FFN-shaped GEMM, [B·(Q+T), D] · [D, F], its best of 20 runs (a ceiling, not a typical run).
  const m = B * (config.num_query_tokens + T);
  const a = tf.randomNormal([m, o.hidden_size]);
  const b = tf.randomNormal([o.hidden_size, o.ffn_dim]);
  const probe: number[] = [];
  for (let i = 0; i < 22; i++) {
    const t0 = performance.now();
    const c = tf.matMul(a, b);
    c.dataSync();
    probe.push(performance.now() - t0);
    c.dispose();
  }
  a.dispose();
  b.dispose();
  const gflops = (2 * m * o.hidden_size * o.ffn_dim) / (Math.min(...probe.slice(2)) * 1e6);
  console.log(`matmul probe [${m}×${o.hidden_size}]·[${o.hidden_size}×${o.ffn_dim}]: ${gflops.toFixed(1)} GFLOP/s`);

  const timeSteps = () => {
    const ms: number[] = [];
    const widenMs: number[] = [];
    let loss = NaN;
    let targetRows = 0;
    for (let i = 0; i <= iters; i++) {
      lm.weights.resetCounters();
      const t0 = performance.now();
      const r = stage2Step(params, lm, inputs);
      for (const g of r.grads.values()) g.dataSync();
      const dt = performance.now() - t0;
      loss = r.loss;
      targetRows = r.targetTokens;
      r.dispose();
      if (i > 0) {
        // the first step warms up kernels and memory
        ms.push(dt);
        widenMs.push(lm.weights.widening.ms);
      }
    }
    return { ms, widenMs, loss, targetRows };
  };
  // Baseline in the same run: the 16-bit weights widened in JS (a table lookup per element) instead of the addon's
  // F16C conversion.
  lm.weights.nativeWidening = false;
  const js = timeSteps();
  lm.weights.nativeWidening = true;
  const { ms, widenMs, loss, targetRows } = timeSteps();
  console.log(`baseline, widening in JS: median ${median(js.ms).toFixed(0)} ms a step, of which widening ${median(js.widenMs).toFixed(1)} ms`);
  const stepMs = median(ms);
  const widen = median(widenMs);
  const widenings = lm.weights.widening.count;
  const perLayer = widen / (2 * o.num_hidden_layers + 4); // forward and backward: every layer, the final LayerNorm, the head
  const flops = stepFlops(config, B, T, targetRows);
  const fmt = (x: number) => x.toFixed(0);
  console.log(`step: median ${fmt(stepMs)} ms [${ms.map(fmt).join(', ')}], loss ${loss.toFixed(6)}, ${targetRows} target tokens; ratio baseline/step ${(median(js.ms) / stepMs).toFixed(2)}×`);
  console.log(
    `widening FP16 → FP32: ${widen.toFixed(1)} ms a step (${((100 * widen) / stepMs).toFixed(1)}% of it; ${widenings} widenings, ` +
      `${mib(lm.weights.widening.bytes)} produced), ${perLayer.toFixed(2)} ms per LM layer and pass`,
  );
  console.log(
    `matmul FLOPs a step: ${(flops.model / 1e9).toFixed(1)} G model + ${(flops.recompute / 1e9).toFixed(1)} G recomputed in the backward; ` +
      `model FLOPs utilisation ${((100 * flops.model) / (stepMs * 1e6 * gflops)).toFixed(1)}% of the probe ` +
      `(with the recomputation ${((100 * (flops.model + flops.recompute)) / (stepMs * 1e6 * gflops)).toFixed(1)}%)`,
  );
  const heap = wasmHeapBytes();
  console.log(`high-water: wasm heap ${heap === undefined ? 'n/a' : mib(heap)}, process RSS ${mib(process.resourceUsage().maxRSS * 1024)}`);
  disposeParams(params);
  for (const t of [visionHidden, optInputIds, optAttentionMask]) t.dispose();
  console.log(`step_ms ${stepMs.toFixed(1)}`);
}
