/** Golden case 1 (stage-1 forward) and the FP16 backbone. */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { toFloat32, toInt32 } from '../../common';
import {
  disposeParams,
  itcQueryMask,
  itcTextMask,
  itgMask,
  itmMask,
  lnVision,
  loadParams,
  localNegatives,
  paramManifest,
  stage1Step,
  trainableNames,
  VisionBackbone,
  type Params,
} from '../../trainer/model';
import { initEngine, tf } from '../../trainer/engine';
import { expectClose, expectLoss, floatTensor, get, golden, intTensor, liveTensors } from './golden';

const g = golden();
const config = g.config;
const case1 = () => g.file('case1_stage1_forward.safetensors');
let params: Params;
let backbone: VisionBackbone;

beforeAll(async () => {
  await initEngine();
  params = loadParams(g.path('weights.safetensors'), config);
  backbone = VisionBackbone.load(g.path('weights.safetensors'), config);
});
afterAll(() => disposeParams(params));

describe('golden case 1: stage-1 forward', () => {
  test('parameter manifest matches golden.json (names, order, shapes, trainable flags)', () => {
    const ours = paramManifest(config);
    const theirs = g.json.param_manifest;
    expect(ours.map((p) => p.name)).toEqual(Object.keys(theirs));
    for (const p of ours) expect(p.shape, p.name).toEqual(theirs[p.name]!.shape);
    const trainable = new Set([...trainableNames(config, 1), ...trainableNames(config, 2)]);
    for (const p of ours) expect(trainable.has(p.name), p.name).toBe(theirs[p.name]!.trainable);
    expect(trainableNames(config, 1)).toEqual(g.json.trainable_stage1);
  });

  test('inputs in golden.json agree with the case file', () => {
    const c = case1();
    expect(Array.from(toInt32(get(c, 'input.input_ids')))).toEqual(g.json.inputs.input_ids.flat());
    expect(Array.from(toInt32(get(c, 'input.attention_mask')))).toEqual(g.json.inputs.attention_mask.flat());
  });

  test('attention masks', () => {
    const c = case1();
    const { attention_mask: att, batch } = g.json.inputs;
    const Q = config.num_query_tokens;
    const negText = g.json.inputs.itm_neg_text_idx;
    const itmRows = [...att, ...att, ...negText.map((i) => att[i]!)];
    const cases = [
      ['mask.itc_query', itcQueryMask(batch, Q)],
      ['mask.itc_text', itcTextMask(att)],
      ['mask.itm', itmMask(itmRows, Q)],
      ['mask.itg', itgMask(att, Q)],
    ] as const;
    for (const [name, m] of cases) {
      const ref = get(c, name);
      expect(m.shape, name).toEqual(ref.shape);
      expect(Array.from(m.data), name).toEqual(Array.from(ref.data as Uint8Array));
    }
  });

  test('activations, similarities, logits and losses', () => {
    const c = case1();
    const tol = g.json.tolerances.float32_forward;
    const before = liveTensors();
    const pixels = floatTensor(get(c, 'input.pixel_values'));
    const visionHidden = backbone.encode(pixels);
    expectClose('vision_last_hidden_state', visionHidden.dataSync(), toFloat32(get(c, 'out.vision_last_hidden_state')), tol);
    const inputIds = intTensor(get(c, 'input.input_ids')) as tf.Tensor2D;
    const attentionMask = intTensor(get(c, 'input.attention_mask')) as tf.Tensor2D;
    const negatives = localNegatives({ inputIds, attentionMask }, Array.from(toInt32(get(c, 'input.itm_neg_image_idx'))), Array.from(toInt32(get(c, 'input.itm_neg_text_idx'))));
    const r = stage1Step(params, config, { visionHidden, inputIds, attentionMask, negatives }, { activations: true, grads: false });
    const checks: [string, tf.Tensor][] = [
      ['out.image_embeds', r.activations.get('imageEmbeds')!],
      ['out.query_output', r.activations.get('queryOutput')!],
      ['out.image_feats', r.imageFeats],
      ['out.text_last_hidden_state', r.activations.get('textLastHiddenState')!],
      ['out.text_feat', r.textFeat],
      ['out.sim_i2t', r.simI2t],
      ['out.sim_t2i', r.simT2i],
      ['out.itm_weights_t2i', r.itmWeightsT2i],
      ['out.itm_weights_i2t', r.itmWeightsI2t],
      ['out.itm_logits', r.activations.get('itmLogits')!],
      ['out.itg_logits', r.activations.get('itgLogits')!],
    ];
    for (const [name, t] of checks) {
      const ref = get(c, name);
      expect(t.shape, name).toEqual(ref.shape);
      expectClose(name, t.dataSync(), toFloat32(ref), tol);
    }
    const lt = g.json.tolerances.float32_losses;
    expectLoss('loss_itc', r.losses.itc, toFloat32(get(c, 'out.loss_itc'))[0]!, lt);
    expectLoss('loss_itm', r.losses.itm, toFloat32(get(c, 'out.loss_itm'))[0]!, lt);
    expectLoss('loss_itg', r.losses.itg, toFloat32(get(c, 'out.loss_itg'))[0]!, lt);
    expectLoss('loss', r.losses.total, toFloat32(get(c, 'out.loss'))[0]!, lt);
    expectLoss('golden.json losses.itc', r.losses.itc, g.json.losses.itc!, lt);
    expectLoss('golden.json losses.itm', r.losses.itm, g.json.losses.itm!, lt);
    expectLoss('golden.json losses.itg', r.losses.itg, g.json.losses.itg!, lt);
    r.dispose();
    for (const t of [pixels, visionHidden, inputIds, attentionMask, negatives.negTextIds, negatives.negTextMask]) t.dispose();
    expect(liveTensors()).toBe(before);
  });

  test('ITM labels and ITG ids/labels follow the conventions', () => {
    const c = case1();
    const B = g.json.inputs.batch;
    expect(Array.from(toInt32(get(c, 'out.itm_labels')))).toEqual([...Array(B).fill(1), ...Array(2 * B).fill(0)]);
    const q = config.qformer_config;
    const dec = g.json.inputs.input_ids.map((row) => row.map((v, j) => (j === 0 ? config.lavis_config.dec_token_id : v)));
    expect(Array.from(toInt32(get(c, 'out.itg_input_ids')))).toEqual(dec.flat());
    expect(Array.from(toInt32(get(c, 'out.itg_labels')))).toEqual(dec.flat().map((v) => (v === q.pad_token_id ? -100 : v)));
  });
});

describe('FP16 backbone', () => {
  test('stays 16-bit resident and reproduces image_embeds_fp16_backbone', () => {
    const c = case1();
    const fp16 = VisionBackbone.load(g.path('weights_backbone_fp16.safetensors'), config);
    const expected = paramManifest(config).filter((p) => p.group === 'vision').reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
    expect(fp16.paramCount).toBe(expected);
    const bytesPerParam = fp16.residentBytes / fp16.paramCount;
    expect(bytesPerParam).toBeLessThanOrEqual(2.1);
    const before = liveTensors();
    const pixels = floatTensor(get(c, 'input.pixel_values'));
    const hidden = fp16.encode(pixels);
    const embeds = lnVision(params, config, hidden);
    // Our arithmetic is float32 on exactly widened fp16 weights, so the golden fp16-backbone tolerance applies.
    expectClose('image_embeds_fp16_backbone', embeds.dataSync(), toFloat32(get(c, 'out.image_embeds_fp16_backbone')), g.json.tolerances.fp16_backbone_outputs);
    // The fp16 model differs from the fp32 one by more than float32 noise: the test would see a wrong file.
    const hidden32 = backbone.encode(pixels);
    const fp32 = lnVision(params, config, hidden32);
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(fp32, embeds))));
    expect(diff.dataSync()[0]!).toBeGreaterThan(0);
    for (const t of [pixels, hidden, hidden32, embeds, fp32, diff]) t.dispose();
    expect(liveTensors()).toBe(before);
  });
});
