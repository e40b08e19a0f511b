/**
 * Golden case 4: ITC of one global batch split over data-parallel ranks, computed rank by rank through the API the
 * distributed trainer uses (features -> all-gather in rank order -> step with the gathered features). The ranks and
 * their slices come from golden.json.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { toFloat32 } from '../../common';
import {
  disposeParams,
  loadParams,
  stage1FeatureBackward,
  stage1Features,
  stage1Step,
  VisionBackbone,
  type Params,
  type Stage1Result,
} from '../../trainer/model';
import { initEngine, tf } from '../../trainer/engine';
import { expectClose, expectGradClose, expectLoss, floatTensor, get, golden, intTensor, liveTensors } from './golden';

const g = golden();
const config = g.config;
const mr = g.json.inputs.multirank;
let params: Params;
let all: { visionHidden: tf.Tensor3D; inputIds: tf.Tensor2D; attentionMask: tf.Tensor2D };

const rows = <T extends tf.Tensor>(t: T, [begin, end]: [number, number]): T => tf.slice(t, begin, end - begin) as T;

beforeAll(async () => {
  await initEngine();
  params = loadParams(g.path('weights.safetensors'), config);
  const c4 = g.file('case4_itc_multirank.safetensors');
  const pixels = floatTensor(get(c4, 'input.pixel_values'));
  all = {
    visionHidden: VisionBackbone.load(g.path('weights.safetensors'), config).encode(pixels),
    inputIds: intTensor(get(c4, 'input.input_ids')) as tf.Tensor2D,
    attentionMask: intTensor(get(c4, 'input.attention_mask')) as tf.Tensor2D,
  };
  pixels.dispose();
});
afterAll(() => {
  disposeParams(params);
  Object.values(all).forEach((t) => t.dispose());
});

function compareGrads(prefix: string, grads: Map<string, tf.Tensor>): void {
  const c4 = g.file('case4_itc_multirank.safetensors');
  for (const name of g.json.itc_params) {
    const ref = get(c4, `${prefix}.${name}`);
    const grad = grads.get(name)!;
    expect(grad.shape, name).toEqual(ref.shape);
    expectGradClose(`${prefix}.${name}`, grad.dataSync(), toFloat32(ref));
  }
}

describe(`golden case 4: ITC over ${mr.world_size} ranks`, () => {
  test('inputs agree with golden.json and the slices cover the batch in rank order', () => {
    expect(mr.rank_slices.length).toBe(mr.world_size);
    expect(mr.rank_slices[0]![0]).toBe(0);
    for (let r = 1; r < mr.world_size; r++) expect(mr.rank_slices[r]![0]).toBe(mr.rank_slices[r - 1]![1]);
    expect(mr.rank_slices[mr.world_size - 1]![1]).toBe(all.inputIds.shape[0]);
    expect(all.inputIds.arraySync()).toEqual(mr.input_ids);
    expect(all.attentionMask.arraySync()).toEqual(mr.attention_mask);
  });

  test('per-rank similarities, losses, LAVIS gradients and full-gather gradients; global one-process ITC', () => {
    const c4 = g.file('case4_itc_multirank.safetensors');
    const fwd = g.json.tolerances.float32_forward;
    const lt = g.json.tolerances.float32_losses;
    const before = liveTensors();
    const local = mr.rank_slices.map((slice) => ({
      visionHidden: rows(all.visionHidden, slice),
      inputIds: rows(all.inputIds, slice),
      attentionMask: rows(all.attentionMask, slice),
    }));
    // 1. each rank computes its features; 2. all-gather in rank order.
    const feats = local.map((l) => stage1Features(params, config, l));
    const allImageFeats = tf.concat(feats.map((f) => f.imageFeats), 0) as tf.Tensor3D;
    const allTextFeat = tf.concat(feats.map((f) => f.textFeat), 0) as tf.Tensor2D;
    // 3. each rank's step against the gathered features.
    const results: Stage1Result[] = local.map((l, r) =>
      stage1Step(params, config, { ...l, gathered: { allImageFeats, allTextFeat, offset: mr.rank_slices[r]![0] } }, { objectives: ['itc'], gatheredGrads: true }),
    );
    let meanLoss = 0;
    results.forEach((res, r) => {
      expectClose(`rank${r}.sim_i2t`, res.simI2t.dataSync(), toFloat32(get(c4, `rank${r}.sim_i2t`)), fwd);
      expectClose(`rank${r}.sim_t2i`, res.simT2i.dataSync(), toFloat32(get(c4, `rank${r}.sim_t2i`)), fwd);
      expectLoss(`rank${r}.loss_itc`, res.losses.itc, toFloat32(get(c4, `rank${r}.loss_itc`))[0]!, lt);
      compareGrads(`grad_lavis.rank${r}`, res.grads);
      meanLoss += res.losses.itc / mr.world_size;
    });
    expectLoss('mean of rank losses vs global.loss_itc', meanLoss, toFloat32(get(c4, 'global.loss_itc'))[0]!, lt);

    // Gathering that passes gradients back: sum the gathered-feature gradients over ranks, each rank backpropagates
    // its slice through its own features and adds that to its step gradient.
    const dImage = tf.addN(results.map((res) => res.gatheredGrads!.allImageFeats)) as tf.Tensor3D;
    const dText = tf.addN(results.map((res) => res.gatheredGrads!.allTextFeat)) as tf.Tensor2D;
    local.forEach((l, r) => {
      const slice = mr.rank_slices[r]!;
      const upstream = { imageFeats: rows(dImage, slice), textFeat: rows(dText, slice) };
      const extra = stage1FeatureBackward(params, config, l, upstream);
      const full = new Map([...results[r]!.grads].map(([n, t]) => [n, tf.add(t, extra.get(n)!)]));
      compareGrads(`grad_full.rank${r}`, full);
      for (const t of [...extra.values(), ...full.values(), upstream.imageFeats, upstream.textFeat]) t.dispose();
    });

    // The same batch in one process: detached (LAVIS) and plain gradients.
    const global = stage1Step(params, config, all, { objectives: ['itc'] });
    expectClose('global.sim_i2t', global.simI2t.dataSync(), toFloat32(get(c4, 'global.sim_i2t')), fwd);
    expectClose('global.sim_t2i', global.simT2i.dataSync(), toFloat32(get(c4, 'global.sim_t2i')), fwd);
    expectLoss('global.loss_itc', global.losses.itc, toFloat32(get(c4, 'global.loss_itc'))[0]!, lt);
    expectLoss('golden.json losses.itc_global', global.losses.itc, g.json.losses.itc_global!, lt);
    compareGrads('grad_lavis.global', global.grads);
    const plain = stage1Step(params, config, all, { objectives: ['itc'], detachGathered: false });
    compareGrads('grad_full.global', plain.grads);

    for (const res of [...results, global, plain]) res.dispose();
    for (const f of feats) [f.imageFeats, f.textFeat].forEach((t) => t.dispose());
    for (const l of local) Object.values(l).forEach((t) => t.dispose());
    for (const t of [allImageFeats, allTextFeat, dImage, dText]) t.dispose();
    expect(liveTensors()).toBe(before);
  });
});
