/**
 * The MatMul checks, run by wasm-matmul-openblas.test.ts and wasm-matmul-xnnpack.test.ts (one engine per process).
 */
import { beforeAll, describe, expect, test } from 'vitest';
import '@tensorflow/tfjs-backend-cpu';
import { engineInfo, initEngine, tf, type EngineMatMul } from './index';

type Case = { a: number[]; b: number[]; transposeA: boolean; transposeB: boolean };

// Random shapes over every layout the kernel distinguishes: 2-D, batched a against a matrix b (row folding),
// equal batches, broadcast batches (either side, and both), transposes, and degenerate sizes.
function randomCases(count: number, seed: number): Case[] {
  let s = seed;
  const rnd = (n: number) => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s % n;
  };
  const cases: Case[] = [];
  for (let i = 0; i < count; i++) {
    const m = 1 + rnd(9);
    const k = 1 + rnd(9);
    const n = 1 + rnd(9);
    const transposeA = rnd(2) === 1;
    const transposeB = rnd(2) === 1;
    const layout = rnd(5);
    let aOuter: number[] = [];
    let bOuter: number[] = [];
    if (layout === 1) aOuter = [1 + rnd(4), 1 + rnd(3)];
    if (layout === 2) aOuter = bOuter = [1 + rnd(4)];
    if (layout === 3) [aOuter, bOuter] = [[3], [1]];
    if (layout === 4) [aOuter, bOuter] = rnd(2) ? [[], [1 + rnd(4)]] : [[2, 1], [3]];
    cases.push({
      a: [...aOuter, ...(transposeA ? [k, m] : [m, k])],
      b: [...bOuter, ...(transposeB ? [n, k] : [k, n])],
      transposeA,
      transposeB,
    });
  }
  return cases;
}

/** Independent reference on cpu: explicit transposes, explicit broadcasting, einsum-free loops by matMul of equal batches. */
function reference(a: tf.Tensor, b: tf.Tensor, c: Case): tf.Tensor {
  return tf.tidy(() => {
    const t = (x: tf.Tensor) => tf.transpose(x, [...Array(x.rank - 2).keys(), x.rank - 1, x.rank - 2]);
    let a2 = c.transposeA ? t(a) : a;
    let b2 = c.transposeB ? t(b) : b;
    const outer = tf.broadcast_util.assertAndGetBroadcastShape(a2.shape.slice(0, -2), b2.shape.slice(0, -2));
    a2 = tf.broadcastTo(a2, [...outer, ...a2.shape.slice(-2)]);
    b2 = tf.broadcastTo(b2, [...outer, ...b2.shape.slice(-2)]);
    return tf.matMul(a2, b2);
  });
}

function maxRelErr(x: ArrayLike<number>, y: ArrayLike<number>): number {
  expect(x.length).toBe(y.length);
  let scale = 1e-3;
  for (let i = 0; i < y.length; i++) scale = Math.max(scale, Math.abs(y[i]!));
  let err = 0;
  for (let i = 0; i < y.length; i++) err = Math.max(err, Math.abs(x[i]! - y[i]!));
  return err / scale;
}

const numDataIds = () => tf.engine().backend.numDataIds();

export function matMulSuite(matmul: EngineMatMul & ('openblas' | 'xnnpack')): void {
  beforeAll(async () => {
    expect(await initEngine({ engine: 'wasm', matmul })).toBe('wasm');
    expect(engineInfo()?.matmul).toBe(matmul);
  });

  describe(`wasm MatMul on ${matmul}`, () => {
    const cases = randomCases(40, 7);

    test('forward equals an independent cpu reference on random shapes, with no tensor or data leaks', async () => {
      for (const c of cases) {
        const a = tf.randomNormal(c.a, 0, 1, 'float32', 1);
        const b = tf.randomNormal(c.b, 0, 1, 'float32', 2);
        const tensors = tf.memory().numTensors;
        const ids = numDataIds();
        const out = tf.matMul(a, b, c.transposeA, c.transposeB);
        const got = await out.data();
        out.dispose();
        expect(tf.memory().numTensors).toBe(tensors);
        expect(numDataIds()).toBe(ids);
        await tf.setBackend('cpu');
        const ref = reference(a, b, c);
        const want = await ref.data();
        const wantShape = ref.shape;
        ref.dispose();
        await tf.setBackend('wasm');
        expect(out.shape, JSON.stringify(c)).toEqual(wantShape);
        expect(maxRelErr(got, want), JSON.stringify(c)).toBeLessThan(1e-5);
        tf.dispose([a, b]);
      }
    });

    test('gradients equal the cpu backend with explicit broadcasting', async () => {
      for (const c of cases) {
        const a = tf.randomNormal(c.a, 0, 1, 'float32', 3);
        const b = tf.randomNormal(c.b, 0, 1, 'float32', 4);
        const w = tf.tidy(() => tf.randomNormal(reference(a, b, c).shape, 0, 1, 'float32', 5));
        const f = (x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x, y, c.transposeA, c.transposeB), w));
        const [da, db] = tf.grads(f)([a, b]);
        const got = [await da!.data(), await db!.data()];
        expect(da!.shape).toEqual(a.shape);
        expect(db!.shape).toEqual(b.shape);
        tf.dispose([da!, db!]);
        await tf.setBackend('cpu');
        // The reference differentiates through explicit transposes and broadcastTo (stock gradients only).
        const g = (x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(reference(x, y, c), w));
        const [ra, rb] = tf.grads(g)([a, b]);
        const want = [await ra!.data(), await rb!.data()];
        tf.dispose([ra!, rb!]);
        await tf.setBackend('wasm');
        expect(maxRelErr(got[0]!, want[0]!), `da ${JSON.stringify(c)}`).toBeLessThan(1e-5);
        expect(maxRelErr(got[1]!, want[1]!), `db ${JSON.stringify(c)}`).toBeLessThan(1e-5);
        tf.dispose([a, b, w]);
      }
    });

    test('fused matMul (bias, activation, transposes, batched a) equals the cpu backend', async () => {
      const shapes: [number[], number[], boolean, boolean][] = [
        [[4, 6, 5], [5, 3], false, false],
        [[4, 5, 6], [3, 5], true, true],
        [[1, 6, 5], [1, 3, 5], false, true],
        [[2, 6, 5], [2, 5, 3], false, false],
        [[2, 5, 6], [2, 3, 5], true, true],
      ];
      for (const [sa, sb, transposeA, transposeB] of shapes) {
        for (const activation of ['linear', 'relu', 'sigmoid'] as const) {
          const a = tf.randomNormal(sa, 0, 1, 'float32', 6);
          const b = tf.randomNormal(sb, 0, 1, 'float32', 7);
          const bias = tf.randomNormal([3], 0, 1, 'float32', 8);
          const run = async () => {
            const out = tf.fused.matMul({ a, b, transposeA, transposeB, bias, activation });
            const data = await out.data();
            const shape = out.shape;
            out.dispose();
            return { data, shape };
          };
          const got = await run();
          await tf.setBackend('cpu');
          const want = await run();
          await tf.setBackend('wasm');
          expect(got.shape).toEqual(want.shape);
          expect(maxRelErr(got.data, want.data)).toBeLessThan(1e-5);
          tf.dispose([a, b, bias]);
        }
      }
    });

    test('one tensor data read as b under two shapes (reshape shares it) gives both right results', async () => {
      // XNNPACK caches packed weights by tensor id; a reshape shares the id with a different shape.
      const w = tf.randomNormal([6, 4], 0, 1, 'float32', 9);
      const w2 = tf.reshape(w, [4, 6]);
      const x1 = tf.randomNormal([2, 6], 0, 1, 'float32', 10);
      const x2 = tf.randomNormal([3, 4], 0, 1, 'float32', 11);
      const run = async () => Promise.all([tf.matMul(x1, w), tf.matMul(x2, w2), tf.matMul(x1, w)].map((t) => t.data()));
      const got = await run();
      await tf.setBackend('cpu');
      const want = await run();
      await tf.setBackend('wasm');
      for (let i = 0; i < 3; i++) expect(maxRelErr(got[i]!, want[i]!)).toBeLessThan(1e-5);
      tf.dispose([w, w2, x1, x2]);
    });

    test('rejects mismatched inner dimensions with a message naming both shapes', () => {
      const a = tf.zeros([2, 3]);
      const b = tf.zeros([4, 5]);
      expect(() => tf.matMul(a, b)).toThrow(/\[2,3\].*\[4,5\].*3 ≠ 4/);
      tf.dispose([a, b]);
    });
  });
}
