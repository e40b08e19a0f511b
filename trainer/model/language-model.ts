/**
 * The frozen language model of stage 2 as the step sees it (BLIP-2 §3.3): it reads a soft prompt — the projected
 * query outputs — in front of a text, and predicts the text. OPT, a decoder-only LM, implements it today (opt.ts);
 * FlanT5, an encoder-decoder trained as a prefix LM (LAVIS blip2_t5.py), fits the same surface: its `hidden` would
 * be the decoder's output over the target text, its `targets` the decoder labels.
 */
import type { Blip2Config } from './config';
import type { tf } from '../engine';
import type { FrozenWeights } from './frozen-weights';

/** A tokenised batch for the LM: right-padded token ids and their 0/1 mask, [B][T] each. */
export interface LanguageModelText {
  ids: number[][];
  mask: number[][];
}

/** What the LM loss is taken over. */
export interface LanguageModelTargets {
  /** [B][S] labels of the output sequence in Hugging Face's convention (−100 = not a target, before any shift). */
  labels: number[][];
  /** Flat row (b·S + s) of `hidden`'s output whose logits predict a target, and that target. */
  rowIndex: number[];
  targets: number[];
}

export interface LanguageModel {
  readonly config: Blip2Config;
  /** Width of the soft prompt the LM reads (= `language_projection`'s output). */
  readonly hiddenSize: number;
  readonly vocabSize: number;
  /** The frozen weights: resident bytes, parameter count, widening cost. */
  readonly weights: FrozenWeights;
  /**
   * Labels and targets of a batch whose soft prompt has `prefixLength` rows; the first `promptLength` text tokens
   * (a prompt, BOS included) are not targets.
   */
  targets(prefixLength: number, text: LanguageModelText, promptLength: number): LanguageModelTargets;
  /** Last hidden state [B,S,D] of the output sequence for soft prompt [B,P,D] and `text`; differentiable in the prompt only. */
  hidden(prefix: tf.Tensor3D, text: LanguageModelText): tf.Tensor3D;
  /** LM head: hidden rows [N,D] -> logits [N,V]; differentiable in the rows. */
  logits(rows: tf.Tensor2D): tf.Tensor2D;
}
