/**
 * One distributed stage-1 training step (features, hard negatives, loss and gradients, all-reduce) of a preset on
 * each tensor engine, one process per engine, run back to back; prints seconds per step and the ratio to `cpu`.
 *   npx tsx trainer/bench/trainer-step.bench.ts [--preset tiny] [--batch 8] [--steps 5]
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createParams, presetConfig, visionSeqLen } from '../model';
import { engineConfigFromEnv } from '../../common';
import { engineOptionsFromConfig, initEngine } from '../engine';
import { createLocalGroup } from '../local-group';
import { Stage1Runtime } from '../stage1-runtime';
import { distributedStage1Step } from '../step';
import { uniformAt } from '../../common';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const preset = arg('preset', 'tiny');
const batch = Number(arg('batch', '8'));
const steps = Number(arg('steps', '5'));
const engine = arg('engine', '');

if (!engine) {
  const results: Record<string, number> = {};
  for (const e of ['cpu', 'wasm']) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--engine', e, '--preset', preset, '--batch', String(batch), '--steps', String(steps)], { encoding: 'utf8' });
    const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
    if (!line) throw new Error(`engine ${e} failed:\n${r.stderr.slice(-2000)}`);
    results[e] = (JSON.parse(line) as { stepSeconds: number }).stepSeconds;
  }
  process.stdout.write(`preset ${preset}, batch ${batch}, ${steps} steps each\n`);
  for (const [e, s] of Object.entries(results)) process.stdout.write(`  ${e.padEnd(5)} ${s.toFixed(3)} s/step   ratio to cpu ${(s / results.cpu!).toFixed(2)}\n`);
} else {
  await initEngine({ ...engineOptionsFromConfig(engineConfigFromEnv()), engine: engine as 'cpu' | 'wasm' });
  const config = presetConfig(preset);
  const S = visionSeqLen(config.vision_config), Dv = config.vision_config.hidden_size, T = config.lavis_config.max_txt_len;
  // Captions of random length, [CLS] … [SEP] then padding, as the tokenizer pads to max_txt_len.
  const q = config.qformer_config;
  const inputIds = new Int32Array(batch * T);
  const attentionMask = new Int32Array(batch * T);
  for (let b = 0; b < batch; b++) {
    const len = 3 + Math.floor(uniformAt('len', b) * (T - 3));
    for (let t = 0; t < T; t++) {
      inputIds[b * T + t] = t === 0 ? config.lavis_config.cls_token_id : t === len - 1 ? config.lavis_config.sep_token_id : t < len ? 3 + Math.floor(uniformAt('id', b, t) * 20) : q.pad_token_id;
      attentionMask[b * T + t] = t < len ? 1 : 0;
    }
  }
  const local = {
    batch,
    visionHidden: Float32Array.from({ length: batch * S * Dv }, (_, i) => (uniformAt('v', i) - 0.5) * 4),
    inputIds,
    attentionMask,
  };
  const rt = new Stage1Runtime(config, createParams(config, 1, { stage: 1 }));
  const coll = createLocalGroup(1)[0]!;
  const run = (step: number) => distributedStage1Step(rt, coll, local, { kind: 'sample', seed: 1, step });
  await run(0);
  const t0 = performance.now();
  for (let i = 1; i <= steps; i++) await run(i);
  process.stdout.write(JSON.stringify({ engine, stepSeconds: (performance.now() - t0) / 1000 / steps }) + '\n');
}
