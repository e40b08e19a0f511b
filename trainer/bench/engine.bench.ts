/**
 * `npm run bench:engine`: matmul GFLOP/s and one BERT-base Q-Former layer forward+backward for each engine that runs
 * here, every figure also as a ratio against the baseline (stock tfjs wasm, 1 thread) measured in the same run.
 * Each engine runs in a child process of its own (a process holds one wasm backend).
 *
 *   npm run bench:engine                       all engines
 *   npm run bench:engine -- --reps 5           more repetitions (median reported)
 *   npm run bench:engine -- --skip-layer       matmuls only
 *   npm run bench:engine -- --rounds 3         best of 3 interleaved rounds (for a shared, noisy machine)
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { engineConfigFromEnv } from '../../common';
import { engineInfo, engineOptionsFromConfig, initEngine, tf, type EngineOptions } from '../engine';

interface EngineSpec {
  id: string;
  label: string;
  engine: 'wasm' | 'cpu';
  threads?: number;
  stockWasm?: boolean;
  matmul?: EngineOptions['matmul'];
  matmulThreads?: number;
  wasmThreads?: number;
  /** Only the small matmul (too slow for the rest). */
  smallOnly?: boolean;
}

interface Result {
  id: string;
  threads: number;
  matmul: Record<string, number>; // shape key → seconds (median)
  layerSeconds?: number;
}

const MATMULS: Record<string, [number, number, number]> = {
  '[64×768]·[768×768]': [64, 768, 768],
  '[256×768]·[768×768]': [256, 768, 768],
  '[1024×768]·[768×3072]': [1024, 768, 3072],
};
const SMALL = '[64×768]·[768×768]';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** One Q-Former layer of BERT-base with cross-attention (blip2-opt-2.7b's), forward and backward. */
async function layerSeconds(reps: number, profile = false): Promise<number> {
  const B = 8, NQ = 32, NT = 32, H = 768, HEADS = 12, DH = 64, FFN = 3072, S = 257, HI = 1408;
  const L = NQ + NT;
  const params: Record<string, tf.Tensor> = {};
  let seed = 1;
  const linearParams = (name: string, out: number, inp: number) => {
    params[`${name}.weight`] = tf.randomNormal([out, inp], 0, 0.02, 'float32', seed++);
    params[`${name}.bias`] = tf.zeros([out]);
  };
  const lnParams = (name: string) => {
    params[`${name}.weight`] = tf.ones([H]);
    params[`${name}.bias`] = tf.zeros([H]);
  };
  for (const n of ['query', 'key', 'value']) linearParams(`attention.self.${n}`, H, H);
  linearParams('attention.output.dense', H, H);
  lnParams('attention.output.LayerNorm');
  linearParams('crossattention.self.query', H, H);
  linearParams('crossattention.self.key', H, HI);
  linearParams('crossattention.self.value', H, HI);
  linearParams('crossattention.output.dense', H, H);
  lnParams('crossattention.output.LayerNorm');
  linearParams('intermediate.dense', FFN, H);
  linearParams('output.dense', H, FFN);
  lnParams('output.LayerNorm');
  linearParams('intermediate_query.dense', FFN, H);
  linearParams('output_query.dense', H, FFN);
  lnParams('output_query.LayerNorm');
  const names = Object.keys(params);
  const hidden = tf.randomNormal([B, L, H], 0, 1, 'float32', 100);
  const image = tf.randomNormal([B, S, HI], 0, 1, 'float32', 101);
  const mask = tf.zeros([B, 1, 1, L]); // additive attention mask

  const forward = (p: Record<string, tf.Tensor>): tf.Scalar => {
    // x·Wᵀ + b on rows: [N, in] → [N, out]
    const linear = (name: string, x: tf.Tensor) => tf.add(tf.matMul(x, p[`${name}.weight`]!, false, true), p[`${name}.bias`]!);
    const layerNorm = (name: string, x: tf.Tensor) => {
      const { mean, variance } = tf.moments(x, -1, true);
      return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-12))), p[`${name}.weight`]!), p[`${name}.bias`]!);
    };
    const gelu = (x: tf.Tensor) => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.div(x, Math.SQRT2))));
    const split = (x: tf.Tensor, len: number) => tf.transpose(tf.reshape(x, [B, len, HEADS, DH]), [0, 2, 1, 3]);
    const attend = (prefix: string, x: tf.Tensor, xLen: number, kv: tf.Tensor, kvLen: number, m?: tf.Tensor) => {
      const q = split(linear(`${prefix}.self.query`, x), xLen); // [B, heads, xLen, dh]
      const k = split(linear(`${prefix}.self.key`, kv), kvLen); // [B, heads, kvLen, dh]
      const v = split(linear(`${prefix}.self.value`, kv), kvLen);
      let scores = tf.div(tf.matMul(q, k, false, true), Math.sqrt(DH)); // [B, heads, xLen, kvLen]
      if (m) scores = tf.add(scores, m);
      const ctx = tf.matMul(tf.softmax(scores), v); // [B, heads, xLen, dh]
      const merged = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [B * xLen, H]);
      return layerNorm(`${prefix}.output.LayerNorm`, tf.add(linear(`${prefix}.output.dense`, merged), x));
    };
    const x = tf.reshape(hidden, [B * L, H]);
    const a = tf.reshape(attend('attention', x, L, x, L, mask), [B, L, H]);
    const queries = tf.reshape(tf.slice(a, [0, 0, 0], [B, NQ, H]), [B * NQ, H]);
    const text = tf.reshape(tf.slice(a, [0, NQ, 0], [B, NT, H]), [B * NT, H]);
    const cross = attend('crossattention', queries, NQ, tf.reshape(image, [B * S, HI]), S);
    const ffn = (prefix: string, out: string, h: tf.Tensor) =>
      layerNorm(`${out}.LayerNorm`, tf.add(linear(`${out}.dense`, gelu(linear(`${prefix}.dense`, h))), h));
    const yq = ffn('intermediate_query', 'output_query', cross);
    const yt = ffn('intermediate', 'output', text);
    return tf.add(tf.mean(tf.square(yq)), tf.mean(tf.square(yt))) as tf.Scalar;
  };
  const step = () => {
    const t0 = performance.now();
    const { value, grads } = tf.valueAndGrads((...xs: tf.Tensor[]) =>
      forward(Object.fromEntries(names.map((n, i) => [n, xs[i]!]))),
    )(names.map((n) => params[n]!));
    for (const g of grads) g.dataSync();
    value.dataSync();
    tf.dispose([value, ...grads]);
    return (performance.now() - t0) / 1000;
  };
  step(); // warm-up: XNNPACK operator creation, heap growth
  if (profile) {
    const info = await tf.profile(() => {
      step();
    });
    const byKernel = new Map<string, { ms: number; calls: number }>();
    for (const k of info.kernels) {
      const e = byKernel.get(k.name) ?? { ms: 0, calls: 0 };
      e.ms += Number(k.kernelTimeMs);
      e.calls++;
      byKernel.set(k.name, e);
    }
    const total = [...byKernel.values()].reduce((t, e) => t + e.ms, 0);
    process.stderr.write(`kernel time by kernel (one step, total ${total.toFixed(0)} ms):\n`);
    for (const [name, e] of [...byKernel.entries()].sort((x, y) => y[1].ms - x[1].ms).slice(0, 25)) {
      process.stderr.write(`  ${name.padEnd(24)} ${e.ms.toFixed(1).padStart(8)} ms  ${String(e.calls).padStart(5)} calls\n`);
    }
  }
  const times: number[] = [];
  for (let i = 0; i < reps; i++) times.push(step());
  tf.dispose([...Object.values(params), hidden, image, mask]);
  return median(times);
}

async function child(spec: EngineSpec, reps: number, skipLayer: boolean, profile: boolean): Promise<Result> {
  const fromEnv = engineOptionsFromConfig(engineConfigFromEnv()); // what a variant leaves open: BLIP2_ENGINE_THREADS, …
  await initEngine({
    engine: spec.engine,
    threads: spec.threads ?? fromEnv.threads,
    stockWasm: spec.stockWasm,
    matmul: spec.matmul ?? fromEnv.matmul,
    matmulThreads: spec.matmulThreads ?? fromEnv.matmulThreads,
    wasmThreads: spec.wasmThreads ?? fromEnv.wasmThreads,
  });
  const matmul: Record<string, number> = {};
  for (const [key, [m, k, n]] of Object.entries(MATMULS)) {
    if (spec.smallOnly && key !== SMALL) continue;
    const a = tf.randomNormal([m, k], 0, 1, 'float32', 1);
    const b = tf.randomNormal([k, n], 0, 1, 'float32', 2);
    const once = () => {
      const t0 = performance.now();
      const c = tf.matMul(a, b);
      c.dataSync();
      c.dispose();
      return (performance.now() - t0) / 1000;
    };
    once();
    const times: number[] = [];
    // Enough repetitions for ~0.5 s of work, at least `reps`.
    const first = once();
    const count = Math.max(reps, Math.min(50, Math.ceil(0.5 / Math.max(first, 1e-4))));
    for (let i = 0; i < count; i++) times.push(once());
    matmul[key] = median(times);
    tf.dispose([a, b]);
  }
  const result: Result = { id: spec.id, threads: engineInfo()!.threads, matmul };
  if (!skipLayer && !spec.smallOnly) {
    result.layerSeconds = await layerSeconds(spec.stockWasm ? Math.min(reps, 2) : reps, profile);
  }
  return result;
}

async function main() {
  const program = new Command('bench:engine')
    .description('matmul GFLOP/s and a Q-Former layer fwd+bwd per tensor engine, as ratios against stock wasm, 1 thread')
    .option('--reps <n>', 'repetitions per measurement (median reported)', '3')
    .option('--rounds <n>', 'run the engine list this many times, interleaved, keeping each one\'s best', '1')
    .option('--threads <n>', 'threads for our wasm engine (default: the CPU cores, at most 8)')
    .option('--skip-layer', 'matmuls only')
    .option('--only <ids>', 'comma-separated engine ids to run (wasm-stock-1, cpu, xnn-1, xnn-N, blas-1, blas-N, blas-N-wasm-N)')
    .option('--profile', 'print the layer step\'s kernel time by kernel (stderr of each engine)')
    .option('--child <json>', 'internal: run one engine and print its result as JSON')
    .parse();
  const opts = program.opts<{
    reps: string;
    rounds: string;
    threads?: string;
    skipLayer?: boolean;
    only?: string;
    profile?: boolean;
    child?: string;
  }>();
  const reps = Number(opts.reps);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, got ${opts.reps}`);
  if (opts.child) {
    const res = await child(JSON.parse(opts.child) as EngineSpec, reps, !!opts.skipLayer, !!opts.profile);
    process.stdout.write(`RESULT ${JSON.stringify(res)}\n`);
    process.exit(0);
  }
  const cores = os.availableParallelism();
  const threads = opts.threads ? Number(opts.threads) : Math.min(8, cores);
  const specs: EngineSpec[] = [
    { id: 'wasm-stock-1', label: 'tfjs wasm, stock, 1 thread (baseline)', engine: 'wasm', stockWasm: true },
    { id: 'cpu', label: 'tfjs cpu, stock', engine: 'cpu', smallOnly: true },
    { id: 'xnn-1', label: 'ours: wasm + XNNPACK, 1 thread', engine: 'wasm', threads: 1, matmul: 'xnnpack' },
    { id: `xnn-${threads}`, label: `ours: wasm + XNNPACK, ${threads} threads`, engine: 'wasm', threads, matmul: 'xnnpack' },
    { id: 'blas-1', label: 'ours: wasm + OpenBLAS, 1 thread', engine: 'wasm', threads: 1, matmul: 'openblas' },
    { id: `blas-${threads}`, label: `ours: wasm 1 thread + OpenBLAS ${threads} (default)`, engine: 'wasm', threads, matmul: 'openblas' },
    {
      id: `blas-${threads}-wasm-${threads}`,
      label: `ours: wasm ${threads} threads + OpenBLAS ${threads}`,
      engine: 'wasm',
      threads,
      wasmThreads: threads,
      matmul: 'openblas',
    },
  ];
  const rounds = Number(opts.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a positive integer, got ${opts.rounds}`);
  const only = opts.only?.split(',');
  const loadStart = os.loadavg();
  const results: (Result & { label: string })[] = [];
  const chosen = specs.filter((s) => !only || only.includes(s.id));
  for (const spec of Array.from({ length: rounds }, () => chosen).flat()) {
    const args = ['tsx', fileURLToPath(import.meta.url), '--reps', String(reps), '--child', JSON.stringify(spec)];
    if (opts.skipLayer) args.push('--skip-layer');
    if (opts.profile) args.push('--profile');
    process.stderr.write(`running ${spec.label}…\n`);
    const run = spawnSync('npx', args, { encoding: 'utf8' });
    const line = run.stdout.split('\n').find((l) => l.startsWith('RESULT '));
    if (run.status !== 0 || !line) {
      process.stderr.write(`${spec.label} failed (exit ${run.status}):\n${run.stderr.slice(-2000)}\n`);
      continue;
    }
    if (opts.profile) process.stderr.write(run.stderr.split('\n').filter((l) => !l.includes('[engine]')).join('\n'));
    const res = { ...(JSON.parse(line.slice(7)) as Result), label: spec.label };
    const prev = results.find((r) => r.id === res.id);
    if (!prev) {
      results.push(res);
      continue;
    }
    // Keep the best of the rounds: on a shared machine the slower figures measure the neighbours.
    for (const [key, sec] of Object.entries(res.matmul)) prev.matmul[key] = Math.min(prev.matmul[key] ?? Infinity, sec);
    if (res.layerSeconds !== undefined) prev.layerSeconds = Math.min(prev.layerSeconds ?? Infinity, res.layerSeconds);
  }
  const base = results.find((r) => r.id === 'wasm-stock-1');
  console.log(`\nmachine: ${os.cpus()[0]?.model ?? 'unknown'}, ${cores} logical cores, Node ${process.version}`);
  const load = (l: number[]) => l.map((x) => x.toFixed(1)).join(' ');
  console.log(`load average at start ${load(loadStart)}, at end ${load(os.loadavg())}`);
  console.log(`matmul (median of each run, best of ${rounds} round(s); GFLOP/s; ratio against the baseline of this run)`);
  for (const [key, [m, k, n]] of Object.entries(MATMULS)) {
    const flops = 2 * m * k * n;
    for (const r of results) {
      const s = r.matmul[key];
      if (s === undefined) continue;
      const ratio = base?.matmul[key] ? (base.matmul[key] / s).toFixed(2) : 'n/a';
      console.log(`  ${key.padEnd(24)} ${r.label.padEnd(40)} ${(flops / s / 1e9).toFixed(1).padStart(7)} GFLOP/s  ×${ratio}`);
    }
  }
  console.log('Q-Former layer (BERT-base, batch 8, 32 queries + 32 text, cross-attention to 257×1408), fwd+bwd');
  for (const r of results) {
    if (r.layerSeconds === undefined) continue;
    const ratio = base?.layerSeconds ? (base.layerSeconds / r.layerSeconds).toFixed(2) : 'n/a';
    console.log(`  ${r.label.padEnd(40)} ${(r.layerSeconds * 1000).toFixed(0).padStart(7)} ms  ×${ratio}`);
  }
}

await main();
