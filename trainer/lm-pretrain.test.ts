/**
 * The LM pre-training with a context (`documents`, `prefixLength`): the trained LM reads what precedes its text.
 * A caption after the token embeddings of its image's other caption must cost far less than the same caption after
 * another image's caption; without that, stage 2 cannot teach the soft prompt anything (the LM writes the same
 * caption whatever the prompt says).
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { byteLevelBpeTokenizerJson, CaptionTokenizer, synthLmVocabulary, synthScene, synthVocabulary } from '../dataloader';
import { initEngine, tf } from './engine';
import { crossEntropySum, disposeParams, optDecoder, optLmHead, optTargets, presetConfig, type Blip2Config, type Params } from './model';
import { pretrainLanguageModel } from './lm-pretrain';

const P = 16;
let config: Blip2Config;
let tokenizer: CaptionTokenizer;
let params: Params;
let losses: number[];
const scenes = Array.from({ length: 232 }, (_, n) => synthScene(3, n, 32));
const train = scenes.slice(0, 200), held = scenes.slice(200);

beforeAll(async () => {
  await initEngine();
  config = presetConfig('demo');
  tokenizer = new CaptionTokenizer(byteLevelBpeTokenizerJson(synthVocabulary()), {}, { kind: 'opt', maxLength: config.lavis_config.max_txt_len });
  config.text_config.vocab_size = tokenizer.vocabSize;
  config.text_config.pad_token_id = tokenizer.padTokenId;
  config.text_config.bos_token_id = config.text_config.eos_token_id = tokenizer.bosTokenId;
  const documents = train.flatMap((s) => s.captions.flatMap((context) => s.captions.map((text) => ({ context, text: `${text}\n` }))));
  ({ params, losses } = pretrainLanguageModel({ config, tokenizer, captions: [], documents, prefixLength: P, steps: 600, batchSize: 16, lr: 3e-3, seed: 1 }));
}, 120_000);

afterAll(() => disposeParams(params));

/** Mean loss of the captions' tokens after BOS, each after the token embeddings of its context. */
function captionLoss(pairs: Array<{ context: string; text: string }>): number {
  return tf.tidy(() => {
    const D = config.text_config.hidden_size, pad = config.text_config.pad_token_id;
    const t = tokenizer.encodeBatch(pairs.map((d) => d.text));
    const rows = (a: Int32Array) => Array.from({ length: t.batchSize }, (_, b) => Array.from(a.subarray(b * t.seqLength, (b + 1) * t.seqLength)));
    const text = { ids: rows(t.inputIds), mask: rows(t.attentionMask) };
    const ctx = pairs.flatMap((d) => {
      const ids = tokenizer.encodePrompt(d.context).slice(1, P + 1);
      return [...ids, ...Array<number>(P - ids.length).fill(pad)];
    });
    const prefix = tf.reshape(tf.gather(params.get('language_model.model.decoder.embed_tokens.weight')!, tf.tensor1d(ctx, 'int32')), [t.batchSize, P, D]) as tf.Tensor3D;
    const targets = optTargets(config, P, text.ids, 1);
    const h = tf.reshape(optDecoder(params, config, prefix, text), [-1, D]) as tf.Tensor2D;
    const picked = tf.gather(h, tf.tensor1d(targets.rowIndex, 'int32')) as tf.Tensor2D;
    return crossEntropySum(optLmHead(params, picked), tf.tensor1d(targets.targets, 'int32'), 0).dataSync()[0]! / targets.targets.length;
  });
}

test('trained after a context, the LM reads it: a held-out caption costs far less after its own image\'s other caption', () => {
  expect(losses[0]).toBeGreaterThan(Math.log(tokenizer.vocabSize) - 0.5); // it starts at chance
  const own = captionLoss(held.map((s) => ({ context: s.captions[1]!, text: `${s.captions[0]}\n` })));
  const other = captionLoss(held.map((s, i) => ({ context: held[(i + 5) % held.length]!.captions[1]!, text: `${s.captions[0]}\n` })));
  // A caption names 2 sizes, 2 colours, 2 shapes and a relation; read from the context they cost nearly nothing,
  // guessed they cost about ln 2 + ln 6 + ln 3 each (plus the relation): the gap is more than a nat a token on
  // average. Half of that is asked, far from any rounding.
  expect(own).toBeLessThan(other - 0.5);
  expect(own).toBeLessThan(0.5 * other);
}, 60_000);

test('a document\'s prompt is read, not trained on: after captions and prompted questions, a caption does not start with the prompt', () => {
  // The LM vocabulary with the VQA prompt's words; half the documents are questions in the prompt with their answers.
  const tok = new CaptionTokenizer(byteLevelBpeTokenizerJson(synthLmVocabulary()), {}, { kind: 'opt', maxLength: config.lavis_config.max_txt_len });
  const c: Blip2Config = structuredClone(config);
  c.text_config.vocab_size = tok.vocabSize;
  c.text_config.pad_token_id = tok.padTokenId;
  c.text_config.bos_token_id = c.text_config.eos_token_id = tok.bosTokenId;
  const prompt = (q: string) => `Question: ${q} Short answer:`;
  const firstTokenProbability = (masked: boolean): number => {
    const documents = train.flatMap((s) => s.captions.flatMap((context) => [
      ...s.captions.map((text) => ({ context, text: `${text}\n` })),
      ...s.qa.slice(0, 2).map(({ question, answer }) => (masked ? { context, prompt: prompt(question), text: ` ${answer}` } : { context, text: `${prompt(question)} ${answer}` })),
    ]));
    const lm = pretrainLanguageModel({ config: c, tokenizer: tok, captions: [], documents, prefixLength: P, steps: 200, batchSize: 16, lr: 3e-3, seed: 2 }).params;
    const question = tok.encodePrompt('Question').at(-1)!;
    // P(first token = "Question" | a held-out image's caption as the context, BOS).
    const p = tf.tidy(() => {
      const D = c.text_config.hidden_size, pad = c.text_config.pad_token_id;
      const ctx = held.flatMap((s) => {
        const ids = tok.encodePrompt(s.captions[0]!).slice(1, P + 1);
        return [...ids, ...Array<number>(P - ids.length).fill(pad)];
      });
      const prefix = tf.reshape(tf.gather(lm.get('language_model.model.decoder.embed_tokens.weight')!, tf.tensor1d(ctx, 'int32')), [held.length, P, D]) as tf.Tensor3D;
      const h = optDecoder(lm, c, prefix, { ids: held.map(() => [tok.bosTokenId]), mask: held.map(() => [1]) }); // [B,P+1,D]
      const last = tf.reshape(tf.slice(h, [0, P, 0], [held.length, 1, D]), [held.length, D]) as tf.Tensor2D;
      return tf.mean(tf.gather(tf.softmax(optLmHead(lm, last)), [question], 1)).dataSync()[0]!;
    });
    disposeParams(lm);
    return p;
  };
  // Trained on the prompt's tokens, a third of the texts start with "Question"; with the prompt read only, none do.
  expect(firstTokenProbability(false)).toBeGreaterThan(0.15);
  expect(firstTokenProbability(true)).toBeLessThan(0.02);
}, 60_000);
