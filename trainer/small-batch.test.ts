// The stage-1 step at the smallest global batches (1, 2, 3 samples; one trainer at the end of an epoch), over
// in-process ranks: it runs, and a one-sample batch trains ITG alone (ITC and ITM have nothing to contrast).
import { describe, expect, it } from 'vitest';
import { createLocalGroup } from './local-group';
import { initEngine, tf } from './engine';
import { stage1Step, trainableNames, visionSeqLen } from './model';
import { Stage1Runtime } from './stage1-runtime';
import { distributedStage1Step } from './step';
import { compareGrads, fixtureParams, makeGlobalBatch, sliceBatch, type GlobalBatch } from './testing/stage1-fixture';

/** The step over in-process ranks with these local batch sizes (sampled hard negatives, as the trainer runs it). */
async function run(g: GlobalBatch, sizes: number[]) {
  const group = createLocalGroup(sizes.length);
  const runtimes = sizes.map(() => new Stage1Runtime(g.config, fixtureParams(g.config)));
  let offset = 0;
  try {
    const res = await Promise.all(sizes.map((b, r) => {
      const local = sliceBatch(g, offset, b);
      offset += b;
      return distributedStage1Step(runtimes[r]!, group[r]!, local, { kind: 'sample', seed: 5, step: 3 });
    }));
    return res.map((x) => x!);
  } finally {
    for (const rt of runtimes) rt.dispose();
  }
}

/** ITG alone on the whole batch in one process: what a one-sample step must equal. */
function itgOnly(g: GlobalBatch): Map<string, Float32Array> {
  const params = fixtureParams(g.config);
  const S = visionSeqLen(g.config.vision_config), Dv = g.config.vision_config.hidden_size, T = g.config.lavis_config.max_txt_len;
  tf.engine().startScope();
  try {
    const r = stage1Step(params, g.config, {
      visionHidden: tf.tensor3d(g.visionHidden, [g.batch, S, Dv]),
      inputIds: tf.tensor2d(g.inputIds, [g.batch, T], 'int32'),
      attentionMask: tf.tensor2d(g.attentionMask, [g.batch, T], 'int32'),
    }, { objectives: ['itg'] });
    const grads = new Map(trainableNames(g.config, 1).map((n) => [n, Float32Array.from(r.grads.get(n)!.dataSync() as Float32Array)]));
    r.dispose();
    return grads;
  } finally {
    tf.engine().endScope();
    for (const t of params.values()) t.dispose();
  }
}

describe('stage-1 step at the smallest global batches', () => {
  it('a one-sample global batch (alone, or on one of two ranks): ITC and ITM are 0, ITG trains, itm_head gets no gradient', async () => {
    // cpu: the wasm engine lacks UnsortedSegmentSum (the gradient of embedding lookups) at tfjs 4.22.
    await initEngine({ engine: 'cpu' });
    const g = makeGlobalBatch(1, 4);
    const want = itgOnly(g);
    for (const sizes of [[1], [1, 0], [0, 1]]) {
      const res = await run(g, sizes);
      for (const r of res) {
        expect(r.globalBatch).toBe(1);
        expect(r.losses.itc).toBe(0);
        expect(r.losses.itm).toBe(0);
        expect(Number.isFinite(r.losses.itg) && r.losses.itg > 0).toBe(true);
        expect(compareGrads(r.grads, want), `world shape [${sizes.join(', ')}]`).toEqual([]);
        for (const [name, grad] of r.grads) if (name.startsWith('itm_head.')) expect(grad.every((x) => x === 0), name).toBe(true);
      }
    }
  });

  it.each([
    { B: 2, shapes: [[2], [1, 1], [0, 2]] },
    { B: 3, shapes: [[3], [1, 2], [1, 1, 1]] },
  ])('a global batch of $B: every objective is on, negatives are never the positive, any split gives the same step', async ({ B, shapes }) => {
    await initEngine({ engine: 'cpu' });
    const g = makeGlobalBatch(B, 6);
    const one = (await run(g, shapes[0]!))[0]!;
    expect(one.losses.itc).toBeGreaterThan(0);
    expect(one.losses.itm).toBeGreaterThan(0);
    one.negImageIdx.forEach((n, i) => expect(n).not.toBe(i));
    one.negTextIdx.forEach((n, i) => expect(n).not.toBe(i));
    for (const sizes of shapes.slice(1)) {
      const res = await run(g, sizes);
      expect(res.flatMap((r) => Array.from(r.negImageIdx))).toEqual(Array.from(one.negImageIdx));
      for (const r of res) {
        expect(r.losses.itm).toBeCloseTo(one.losses.itm, 5);
        expect(compareGrads(r.grads, one.grads), `world shape [${sizes.join(', ')}]`).toEqual([]);
      }
    }
  });
});
