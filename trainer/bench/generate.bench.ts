/**
 * Generation cost per token with and without the key/value cache, on the frozen OPT of a preset (random 16-bit
 * weights, as a stage-2 checkpoint holds them): greedy decoding of one caption after a 32-query soft prompt and a
 * 4-token prompt, each new token one cached position, against recomputing the whole prefix for every token; then
 * beam search (5 beams) with the cache. Prints milliseconds per generated token. `--weights f32` runs the same on
 * float32 parameters (no widening per layer and step, so the cache's saving stands out).
 *   npx tsx trainer/bench/generate.bench.ts [--preset small] [--tokens 30] [--weights f16|f32]
 */
import { engineConfigFromEnv } from '../../common';
import { engineOptionsFromConfig, initEngine, tf } from '../engine';
import { beamSearch, CachedOptDecoder, greedySearch, type StepDecoder } from '../generate';
import { createParams, OptLanguageModel, optDecoder, optLmHead, presetConfig } from '../model';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const preset = arg('preset', 'small');
const tokens = Number(arg('tokens', '30'));
const f32 = arg('weights', 'f16') === 'f32';

const engine = await initEngine(engineOptionsFromConfig(engineConfigFromEnv()));
const config = presetConfig(preset);
const o = config.text_config;
const lm = OptLanguageModel.random(config, 1);
const params = f32 ? createParams(config, 1, { groups: ['language_model'] }) : undefined;
const soft = tf.randomNormal([1, config.num_query_tokens, o.hidden_size], 0, 1, 'float32', 2) as tf.Tensor3D;
const prompt = { ids: [[o.bos_token_id, 10, 20, 30]], mask: [[1, 1, 1, 1]] };
// No end token: every run generates exactly `tokens` tokens.
const options = { eosTokenId: o.vocab_size + 1, maxLength: tokens };

/** Recomputes [soft prompt ; prompt ; generated] through the whole decoder for every token. */
class Uncached implements StepDecoder {
  private ids = prompt.ids.map((r) => [...r]);
  get vocabSize() { return o.vocab_size; }
  get rows() { return 1; }
  logits(): Float32Array {
    return tf.tidy(() => {
      const text = { ids: this.ids, mask: this.ids.map((r) => r.map(() => 1)) };
      const h = params ? optDecoder(params, config, soft, text) : lm.hidden(soft, text);
      const [, S, D] = h.shape;
      const last = tf.reshape(tf.slice(h, [0, S - 1, 0], [1, 1, D]), [1, D]) as tf.Tensor2D;
      return (params ? optLmHead(params, last) : lm.logits(last)).dataSync() as Float32Array;
    });
  }
  append(t: readonly number[]) { this.ids[0]!.push(t[0]!); }
  select() { throw new Error('greedy only'); }
}

const time = (f: () => unknown) => {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
};
const cachedMs = time(() => { const d = new CachedOptDecoder(params ?? lm, config, soft, prompt); greedySearch(d, options); d.dispose(); });
const uncachedMs = time(() => greedySearch(new Uncached(), options));
const beamMs = time(() => { const d = new CachedOptDecoder(params ?? lm, config, soft, prompt); beamSearch(d, { ...options, beams: 5 }); d.dispose(); });
process.stdout.write(`preset ${preset} (OPT ${o.num_hidden_layers} layers, hidden ${o.hidden_size}, vocab ${o.vocab_size}), ${f32 ? 'float32 weights' : 'frozen 16-bit weights'}, engine ${engine}, ${tokens} tokens after ${config.num_query_tokens} + 4 prefix positions\n`);
process.stdout.write(`  greedy, key/value cache      ${(cachedMs / tokens).toFixed(1)} ms/token\n`);
process.stdout.write(`  greedy, whole prefix again   ${(uncachedMs / tokens).toFixed(1)} ms/token  (${(uncachedMs / cachedMs).toFixed(2)}x)\n`);
process.stdout.write(`  beam 5, key/value cache      ${(beamMs / tokens).toFixed(1)} ms/token (5 rows per step)\n`);
