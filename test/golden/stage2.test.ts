/**
 * Golden case 3 (stage 2 with the OPT decoder): soft prompt, mask, positions, labels, logits, loss (with and
 * without a prompt) and the gradients of every stage-2 parameter; and the frozen FP16 LM path against the
 * fp16-backbone outputs.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { toFloat32, toInt32 } from '../../common';
import { initEngine, tf } from '../../trainer/engine';
import {
  disposeParams,
  loadParams,
  OPT_LAYER_NORM_EPS,
  OPT_POSITION_OFFSET,
  OptLanguageModel,
  optPositionIds,
  paramManifest,
  prefixedMask,
  stage2Step,
  stage2TargetCount,
  trainableNames,
  VisionBackbone,
  type Params,
  type Stage2Inputs,
} from '../../trainer/model';
import { expectClose, expectGradClose, expectLoss, floatTensor, get, golden, intTensor, liveTensors } from './golden';

const g = golden();
const config = g.config;
const case3 = () => g.file('case3_stage2.safetensors');
const goldenJson = g.json as typeof g.json & {
  inputs: { opt_input_ids: number[][]; opt_attention_mask: number[][]; opt_prompt_len: number };
  trainable_stage2_with_grad: string[];
  config: { opt: Record<string, number> };
};
let params: Params;
let lm: OptLanguageModel;
let inputs: Stage2Inputs;

beforeAll(async () => {
  await initEngine();
  params = loadParams(g.path('weights.safetensors'), config, { stage: 2 });
  lm = OptLanguageModel.load(g.path('weights.safetensors'), config);
  const c = case3();
  const pixels = floatTensor(get(c, 'input.pixel_values'));
  inputs = {
    visionHidden: VisionBackbone.load(g.path('weights.safetensors'), config).encode(pixels),
    optInputIds: intTensor(get(c, 'input.opt_input_ids')) as tf.Tensor2D,
    optAttentionMask: intTensor(get(c, 'input.opt_attention_mask')) as tf.Tensor2D,
  };
  pixels.dispose();
});
afterAll(() => {
  disposeParams(params);
  for (const t of [inputs.visionHidden, inputs.optInputIds, inputs.optAttentionMask]) t.dispose();
});

describe('golden case 3: stage 2 (OPT)', () => {
  test('the set\'s OPT conventions are the model\'s; inputs in golden.json agree with the case file', () => {
    expect(goldenJson.config.opt.position_offset).toBe(OPT_POSITION_OFFSET);
    expect(goldenJson.config.opt.layer_norm_eps).toBe(OPT_LAYER_NORM_EPS);
    const c = case3();
    expect(Array.from(toInt32(get(c, 'input.opt_input_ids')))).toEqual(goldenJson.inputs.opt_input_ids.flat());
    expect(Array.from(toInt32(get(c, 'input.opt_attention_mask')))).toEqual(goldenJson.inputs.opt_attention_mask.flat());
    // Stage 2's gradients are exactly the stage-2 trainable names (the text-only Q-Former parts are dropped).
    expect(trainableNames(config, 2)).toEqual(goldenJson.trainable_stage2_with_grad);
  });

  test('attention mask, position ids and labels (with and without the prompt)', () => {
    const c = case3();
    const Q = config.num_query_tokens;
    const full = prefixedMask(Q, goldenJson.inputs.opt_attention_mask);
    expect(full.flat()).toEqual(Array.from(toInt32(get(c, 'out.attention_mask'))));
    expect(optPositionIds(full).flat()).toEqual(Array.from(toInt32(get(c, 'out.position_ids'))));
    const text = { ids: goldenJson.inputs.opt_input_ids, mask: goldenJson.inputs.opt_attention_mask };
    expect(lm.targets(Q, text, 0).labels.flat()).toEqual(Array.from(toInt32(get(c, 'out.labels'))));
    expect(lm.targets(Q, text, goldenJson.inputs.opt_prompt_len).labels.flat()).toEqual(Array.from(toInt32(get(c, 'out.labels_prompt'))));
  });

  test('query output, inputs_opt, logits and loss', () => {
    const c = case3();
    const before = liveTensors();
    const r = stage2Step(params, lm, inputs, { grads: false, activations: true });
    const tol = g.json.tolerances.float32_forward;
    for (const [name, key] of [['out.query_output', 'queryOutput'], ['out.inputs_opt', 'inputsOpt'], ['out.logits', 'logits']] as const) {
      const ref = get(c, name);
      const t = r.activations.get(key)!;
      expect(t.shape, name).toEqual(ref.shape);
      expectClose(name, t.dataSync(), toFloat32(ref), tol);
    }
    expect(r.labels.flat()).toEqual(Array.from(toInt32(get(c, 'out.labels'))));
    const lt = g.json.tolerances.float32_losses;
    expectLoss('loss', r.loss, toFloat32(get(c, 'out.loss'))[0]!, lt);
    expectLoss('golden.json losses.stage2', r.loss, g.json.losses.stage2!, lt);
    r.dispose();
    expect(liveTensors()).toBe(before);
  });

  test('loss with the prompt: its tokens (BOS included) are not targets', () => {
    const c = case3();
    const before = liveTensors();
    const promptLength = goldenJson.inputs.opt_prompt_len;
    const r = stage2Step(params, lm, inputs, { grads: false, promptLength });
    const lt = g.json.tolerances.float32_losses;
    expectLoss('loss_prompt', r.loss, toFloat32(get(c, 'out.loss_prompt'))[0]!, lt);
    expectLoss('golden.json losses.stage2_prompt', r.loss, g.json.losses.stage2_prompt!, lt);
    const text = { ids: goldenJson.inputs.opt_input_ids, mask: goldenJson.inputs.opt_attention_mask };
    expect(r.targetTokens).toBe(stage2TargetCount(lm, text, promptLength));
    expect(r.targetTokens).toBe(toInt32(get(c, 'out.labels_prompt')).filter((v, i) => v !== -100 && i % r.labels[0]!.length !== 0).length);
    r.dispose();
    expect(liveTensors()).toBe(before);
  });

  test('grad.* for every stage-2 parameter with a gradient, through the frozen LM', () => {
    const c = case3();
    const before = liveTensors();
    const r = stage2Step(params, lm, inputs);
    expect([...r.grads.keys()]).toEqual(goldenJson.trainable_stage2_with_grad);
    for (const name of goldenJson.trainable_stage2_with_grad) {
      const ref = get(c, `grad.${name}`);
      const grad = r.grads.get(name)!;
      expect(grad.shape, name).toEqual(ref.shape);
      expectGradClose(`grad.${name}`, grad.dataSync(), toFloat32(ref));
    }
    expectLoss('loss (with gradients)', r.loss, toFloat32(get(c, 'out.loss'))[0]!, g.json.tolerances.float32_losses);
    r.dispose();
    expect(liveTensors()).toBe(before);
  });
});

describe('FP16 language model', () => {
  test('stays 16-bit resident and reproduces logits_fp16_backbone and loss_fp16_backbone', () => {
    const c = case3();
    const path = g.path('weights_backbone_fp16.safetensors');
    const fp16 = OptLanguageModel.load(path, config);
    const expected = paramManifest(config).filter((p) => p.group === 'language_model').reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
    expect(fp16.weights.paramCount).toBe(expected);
    expect(fp16.weights.residentBytes / fp16.weights.paramCount).toBe(2);
    const before = liveTensors();
    const pixels = floatTensor(get(c, 'input.pixel_values'));
    const visionHidden = VisionBackbone.load(path, config).encode(pixels);
    const r = stage2Step(params, fp16, { ...inputs, visionHidden }, { activations: true });
    const tol = g.json.tolerances.fp16_backbone_outputs;
    // float32 arithmetic on exactly widened fp16 weights, so the golden fp16-backbone tolerance applies.
    expectClose('logits_fp16_backbone', r.activations.get('logits')!.dataSync(), toFloat32(get(c, 'out.logits_fp16_backbone')), tol);
    expectLoss('loss_fp16_backbone', r.loss, toFloat32(get(c, 'out.loss_fp16_backbone'))[0]!, tol);
    // The fp16 LM differs from the fp32 one by more than float32 noise: the test would see a wrong file.
    expect(Math.abs(r.loss - toFloat32(get(c, 'out.loss'))[0]!)).toBeGreaterThan(0);
    // Every layer was widened in the forward and again in the backward.
    expect(fp16.weights.widening.count).toBeGreaterThanOrEqual(2 * (config.text_config.num_hidden_layers + 2));
    for (const grad of r.grads.values()) expect(grad.dataSync().every(Number.isFinite)).toBe(true);
    r.dispose();
    for (const t of [pixels, visionHidden]) t.dispose();
    expect(liveTensors()).toBe(before);
  });
});
