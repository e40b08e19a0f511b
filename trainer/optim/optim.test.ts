// AdamW with BLIP-2's parameter groups (against torch.optim.AdamW's update rule), clipping, and the LAVIS schedule.
import { describe, expect, it } from 'vitest';
import { AdamW, blip2ParamGroups, globalGradNorm, isDecayed, linearWarmupCosineLr, type ParamSpec } from './index';

const specs: ParamSpec[] = [
  { name: 'temp', shape: [] },
  { name: 'query_tokens', shape: [1, 2, 3] },
  { name: 'qformer.layernorm.weight', shape: [3] },
  { name: 'qformer.layernorm.bias', shape: [3] },
  { name: 'vision_projection.weight', shape: [2, 3] },
  { name: 'cls.predictions.bias', shape: [4] },
];

function fill(spec: ParamSpec[], f: (name: string, i: number) => number) {
  const m = new Map<string, Float32Array>();
  for (const p of spec) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    m.set(p.name, Float32Array.from({ length: n }, (_, i) => f(p.name, i)));
  }
  return m;
}
const clone = (m: Map<string, Float32Array>) => new Map([...m].map(([k, v]) => [k, v.slice()]));

describe('BLIP-2 parameter groups', () => {
  it('decays all but 1-D and *.bias parameters: temp (0-d) and query_tokens are decayed, LayerNorm weights are not', () => {
    expect(blip2ParamGroups(specs)).toEqual({
      decay: ['temp', 'query_tokens', 'vision_projection.weight'],
      noDecay: ['qformer.layernorm.weight', 'qformer.layernorm.bias', 'cls.predictions.bias'],
    });
    expect(isDecayed('itm_head.bias', [2])).toBe(false);
    expect(isDecayed('embeddings.word_embeddings.weight', [100, 32])).toBe(true);
  });
});

describe('AdamW', () => {
  it('moves each weight by lr·sign(g) per step under a constant gradient (bias correction), no decay', () => {
    const opt = new AdamW(specs, { weightDecay: 0 });
    const w = fill(specs, () => 1);
    const g = fill(specs, (_, i) => (i % 2 ? -0.3 : 2.5));
    const lr = 1e-3;
    for (let t = 0; t < 5; t++) opt.update(w, clone(g), lr);
    // m̂ = g and v̂ = g² exactly for a constant gradient, so each step is lr·g/(|g| + ε).
    for (const [name, arr] of w) {
      arr.forEach((x, i) => expect(x, `${name}[${i}]`).toBeCloseTo(1 - 5 * lr * Math.sign(g.get(name)![i]!), 6));
    }
    expect(opt.step).toBe(5);
  });

  it('applies decoupled weight decay to the decayed group only', () => {
    const opt = new AdamW(specs, { weightDecay: 0.05 });
    const w = fill(specs, () => 2);
    const zero = fill(specs, () => 0);
    const lr = 0.1;
    for (let t = 0; t < 3; t++) opt.update(w, clone(zero), lr);
    for (const p of specs) {
      const want = isDecayed(p.name, p.shape) ? 2 * (1 - lr * 0.05) ** 3 : 2;
      for (const x of w.get(p.name)!) expect(x).toBeCloseTo(want, 6);
    }
  });

  it('follows torch.optim.AdamW over several steps with varying gradients', () => {
    // Reference written from torch's `_single_tensor_adamw` on scalars, float32 storage via Math.fround.
    const beta1 = 0.9, beta2 = 0.98, eps = 1e-6, wd = 0.05;
    const opt = new AdamW(specs, { beta1, beta2, eps, weightDecay: wd });
    const w = fill(specs, (n, i) => Math.sin(i + n.length));
    const ref = clone(w);
    const m = fill(specs, () => 0), v = fill(specs, () => 0);
    for (let t = 1; t <= 4; t++) {
      const lr = 1e-2 * t;
      const g = fill(specs, (n, i) => Math.cos(3 * i + t * n.length) * (t + 1));
      opt.update(w, clone(g), lr);
      for (const p of specs) {
        const r = ref.get(p.name)!, mm = m.get(p.name)!, vv = v.get(p.name)!, gg = g.get(p.name)!;
        for (let i = 0; i < r.length; i++) {
          if (isDecayed(p.name, p.shape)) r[i] = Math.fround(r[i]! * (1 - lr * wd));
          mm[i] = Math.fround(mm[i]! + (gg[i]! - mm[i]!) * (1 - beta1));
          vv[i] = Math.fround(vv[i]! * beta2 + (1 - beta2) * gg[i]! * gg[i]!);
          const denom = Math.sqrt(vv[i]!) / Math.sqrt(1 - beta2 ** t) + eps;
          r[i] = Math.fround(r[i]! - (lr / (1 - beta1 ** t)) * (mm[i]! / denom));
        }
      }
    }
    for (const p of specs) {
      const a = w.get(p.name)!, b = ref.get(p.name)!;
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-6 * (1 + Math.abs(b[i]!)));
    }
  });

  it('clips the global gradient norm when maxGradNorm is set and reports the norm before clipping', () => {
    const two: ParamSpec[] = [{ name: 'a.weight', shape: [1, 2] }, { name: 'b.weight', shape: [1, 1] }];
    const opt = new AdamW(two, { maxGradNorm: 1, weightDecay: 0 });
    const g = new Map([['a.weight', Float32Array.of(3, 0)], ['b.weight', Float32Array.of(4)]]);
    const w = fill(two, () => 0);
    const r = opt.update(w, g, 0.1);
    expect(r.gradNorm).toBeCloseTo(5, 6);
    expect(r.clipCoef).toBeCloseTo(1 / 5, 6);
    expect(globalGradNorm(g.values())).toBeCloseTo(1, 5);
    const noClip = new AdamW(two, { weightDecay: 0 }).update(fill(two, () => 0), fill(two, () => 10), 0.1);
    expect(noClip.clipCoef).toBe(1);
  });

  it('continues bit for bit after its state is saved and loaded into a new optimiser', () => {
    const grads = (t: number) => fill(specs, (n, i) => Math.cos(i * 0.7 + t) * n.length);
    const a = new AdamW(specs);
    const wa = fill(specs, (_, i) => i * 0.1);
    for (let t = 0; t < 4; t++) a.update(wa, grads(t), 1e-3);

    const b = new AdamW(specs);
    const wb = fill(specs, (_, i) => i * 0.1);
    for (let t = 0; t < 2; t++) b.update(wb, grads(t), 1e-3);
    const s = b.state();
    const saved = { step: s.step, expAvg: clone(s.expAvg), expAvgSq: clone(s.expAvgSq) };
    const c = new AdamW(specs);
    c.loadState(saved);
    const wc = clone(wb);
    for (let t = 2; t < 4; t++) c.update(wc, grads(t), 1e-3);
    for (const [k, v] of wa) expect(Array.from(wc.get(k)!)).toEqual(Array.from(v));
    expect(c.step).toBe(4);
  });

  it('refuses bad input with a message naming the parameter', () => {
    const opt = new AdamW(specs);
    const w = fill(specs, () => 0);
    const g = fill(specs, () => 0);
    g.delete('temp');
    expect(() => opt.update(w, g, 1e-3)).toThrow(/temp has no gradient/);
    const g2 = fill(specs, () => 0);
    g2.set('query_tokens', new Float32Array(5));
    expect(() => opt.update(w, g2, 1e-3)).toThrow(/query_tokens has 6 values and 5 gradient values/);
    expect(() => new AdamW(specs, { beta2: 1 })).toThrow(/beta2 = 1 is invalid/);
    const bad = { step: 1, expAvg: fill(specs, () => 0), expAvgSq: fill(specs, () => 0) };
    bad.expAvgSq.delete('cls.predictions.bias');
    expect(() => opt.loadState(bad)).toThrow(/exp_avg_sq of parameter cls.predictions.bias is missing/);
  });
});

describe('linear_warmup_cosine_lr (LAVIS stage-1 settings)', () => {
  const o = { initLr: 1e-4, minLr: 1e-5, warmupLr: 1e-6, warmupSteps: 5000, maxEpoch: 10 };
  it('warms up linearly within epoch 0, then holds the peak', () => {
    expect(linearWarmupCosineLr(o, 0, 0)).toBeCloseTo(1e-6, 15);
    expect(linearWarmupCosineLr(o, 0, 2500)).toBeCloseTo(1e-6 + 99e-6 / 2, 15);
    expect(linearWarmupCosineLr(o, 0, 5000)).toBeCloseTo(1e-4, 15);
    expect(linearWarmupCosineLr(o, 0, 9000)).toBeCloseTo(1e-4, 15);
  });
  it('follows a per-epoch cosine from epoch 1, reaching min_lr at max_epoch', () => {
    expect(linearWarmupCosineLr(o, 1, 0)).toBeCloseTo(9e-5 * 0.5 * (1 + Math.cos(Math.PI / 10)) + 1e-5, 15);
    expect(linearWarmupCosineLr(o, 1, 123)).toBe(linearWarmupCosineLr(o, 1, 0));
    expect(linearWarmupCosineLr(o, 5, 0)).toBeCloseTo(5.5e-5, 15);
    expect(linearWarmupCosineLr(o, 10, 0)).toBeCloseTo(1e-5, 15);
  });
  it('defaults warm-up start to the peak (LAVIS warmup_lr < 0) and rejects bad settings', () => {
    expect(linearWarmupCosineLr({ initLr: 3e-4, maxEpoch: 2 }, 0, 0)).toBe(3e-4);
    expect(linearWarmupCosineLr({ initLr: 3e-4, warmupLr: -1, warmupSteps: 10, maxEpoch: 2 }, 0, 5)).toBe(3e-4);
    expect(() => linearWarmupCosineLr({ ...o, maxEpoch: 0 }, 0, 0)).toThrow(/maxEpoch = 0 is invalid/);
    expect(() => linearWarmupCosineLr(o, -1, 0)).toThrow(/epoch = -1/);
  });
});
