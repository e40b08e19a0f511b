/** Golden case 2: gradients of the stage-1 loss (total, per objective, and without detaching ITC's gathered side). */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { toFloat32, toInt32 } from '../../common';
import { disposeParams, loadParams, localNegatives, stage1Step, VisionBackbone, type Objective, type Params, type Stage1Options } from '../../trainer/model';
import { initEngine, tf } from '../../trainer/engine';
import { expectGradClose, floatTensor, get, golden, intTensor, liveTensors } from './golden';

const g = golden();
const config = g.config;
let params: Params;
let inputs: { visionHidden: tf.Tensor3D; inputIds: tf.Tensor2D; attentionMask: tf.Tensor2D };

beforeAll(async () => {
  await initEngine();
  params = loadParams(g.path('weights.safetensors'), config);
  const c1 = g.file('case1_stage1_forward.safetensors');
  const pixels = floatTensor(get(c1, 'input.pixel_values'));
  inputs = {
    visionHidden: VisionBackbone.load(g.path('weights.safetensors'), config).encode(pixels),
    inputIds: intTensor(get(c1, 'input.input_ids')) as tf.Tensor2D,
    attentionMask: intTensor(get(c1, 'input.attention_mask')) as tf.Tensor2D,
  };
  pixels.dispose();
});
afterAll(() => {
  disposeParams(params);
  Object.values(inputs).forEach((t) => t.dispose());
});

const variants: [string, Stage1Options][] = [
  ['grad', {}],
  ['grad_itc', { objectives: ['itc'] as Objective[] }],
  ['grad_itm', { objectives: ['itm'] as Objective[] }],
  ['grad_itg', { objectives: ['itg'] as Objective[] }],
  ['grad_nodetach', { detachGathered: false }],
];

describe('golden case 2: stage-1 gradients', () => {
  test.each(variants)('%s.* for every trainable stage-1 parameter', (prefix, options) => {
    const c1 = g.file('case1_stage1_forward.safetensors');
    const c2 = g.file('case2_stage1_grads.safetensors');
    const before = liveTensors();
    const negatives = localNegatives(inputs, Array.from(toInt32(get(c1, 'input.itm_neg_image_idx'))), Array.from(toInt32(get(c1, 'input.itm_neg_text_idx'))));
    const r = stage1Step(params, config, { ...inputs, negatives }, options);
    expect([...r.grads.keys()]).toEqual(g.json.trainable_stage1);
    for (const name of g.json.trainable_stage1) {
      const ref = get(c2, `${prefix}.${name}`);
      const grad = r.grads.get(name)!;
      expect(grad.shape, name).toEqual(ref.shape);
      expectGradClose(`${prefix}.${name}`, grad.dataSync(), toFloat32(ref));
    }
    r.dispose();
    negatives.negTextIds.dispose();
    negatives.negTextMask.dispose();
    expect(liveTensors()).toBe(before);
  });
});
