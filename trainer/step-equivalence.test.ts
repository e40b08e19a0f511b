// The distributed step's algorithm with the real model, ranks in one process: equal to the one-process step.
// (test/step-distributed.test.ts runs the same with real trainer processes and gRPC collectives.)
import { describe, expect, it } from 'vitest';
import { createLocalGroup } from './local-group';
import { initEngine, tf } from './engine';
import { Stage1Runtime } from './stage1-runtime';
import { distributedStage1Step } from './step';
import { compareGrads, fixtureParams, makeGlobalBatch, referenceStep, sliceBatch } from './testing/stage1-fixture';

describe.each([
  { sizes: [3, 2] },
  { sizes: [4, 0, 2] },
])('stage-1 step over in-process ranks $sizes', ({ sizes }) => {
  it('gives the one-process loss and gradient of the global batch (fixed negatives)', async () => {
    // cpu: the wasm engine lacks UnsortedSegmentSum (the gradient of embedding lookups) at tfjs 4.22.
    await initEngine({ engine: 'cpu' });
    const before = tf.memory().numTensors;
    const B = sizes.reduce((a, c) => a + c, 0);
    const g = makeGlobalBatch(B);
    const ref = referenceStep(g);
    const group = createLocalGroup(sizes.length);
    const runtimes = sizes.map(() => new Stage1Runtime(g.config, fixtureParams(g.config)));
    let offset = 0;
    const results = await Promise.all(sizes.map((b, r) => {
      const local = sliceBatch(g, offset, b);
      offset += b;
      return distributedStage1Step(runtimes[r]!, group[r]!, local, { kind: 'given', negImageIdx: g.negImageIdx, negTextIdx: g.negTextIdx });
    }));
    for (const res of results) {
      expect(res).not.toBeNull();
      expect(res!.globalBatch).toBe(B);
      expect(res!.losses.itc).toBeCloseTo(ref.losses.itc, 5);
      expect(res!.losses.itm).toBeCloseTo(ref.losses.itm, 5);
      expect(res!.losses.itg).toBeCloseTo(ref.losses.itg, 5);
      expect(compareGrads(res!.grads, ref.grads)).toEqual([]);
    }
    // Every rank ends with bit-identical gradients (the all-reduce sums in one order).
    for (const res of results.slice(1)) expect(Buffer.from(res!.flatGrads.buffer, res!.flatGrads.byteOffset, res!.flatGrads.byteLength).equals(Buffer.from(results[0]!.flatGrads.buffer, results[0]!.flatGrads.byteOffset, results[0]!.flatGrads.byteLength))).toBe(true);
    for (const rt of runtimes) rt.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('stage-1 step with sampled hard negatives', () => {
  it('draws the same global negatives and gives the same gradient at world shapes [6], [2, 4] and [3, 1, 2]', async () => {
    await initEngine({ engine: 'cpu' });
    const g = makeGlobalBatch(6, 3);
    const run = async (sizes: number[]) => {
      const group = createLocalGroup(sizes.length);
      const runtimes = sizes.map(() => new Stage1Runtime(g.config, fixtureParams(g.config)));
      let offset = 0;
      const res = await Promise.all(sizes.map((b, r) => {
        const local = sliceBatch(g, offset, b);
        offset += b;
        return distributedStage1Step(runtimes[r]!, group[r]!, local, { kind: 'sample', seed: 42, step: 11 });
      }));
      for (const rt of runtimes) rt.dispose();
      return { negImage: res.flatMap((x) => Array.from(x!.negImageIdx)), negText: res.flatMap((x) => Array.from(x!.negTextIdx)), grads: res[0]!.grads, losses: res[0]!.losses };
    };
    const one = await run([6]);
    one.negImage.forEach((n, i) => expect(n).not.toBe(i));
    one.negText.forEach((n, i) => expect(n).not.toBe(i));
    for (const sizes of [[2, 4], [3, 1, 2]]) {
      const d = await run(sizes);
      expect(d.negImage).toEqual(one.negImage);
      expect(d.negText).toEqual(one.negText);
      expect(d.losses.itm).toBeCloseTo(one.losses.itm, 5);
      expect(compareGrads(d.grads, one.grads)).toEqual([]);
    }
    // The sampled step equals the reference step given those negatives.
    const ref = referenceStep({ ...g, negImageIdx: Int32Array.from(one.negImage), negTextIdx: Int32Array.from(one.negText) });
    expect(compareGrads(one.grads, ref.grads)).toEqual([]);
  });
});
