// The trainer's Prometheus metrics and its per-step JSONL lines.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { createTrainerMetrics } from './metrics';

describe('trainer metrics', () => {
  it('exports each objective loss, phases, all-reduce figures and membership, and writes one JSONL line per step', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-metrics-'));
    try {
      const registry = new Registry();
      const m = createTrainerMetrics({ registry, nodeId: 'node-a', runDir, engine: 'wasm' });
      expect(await registry.metrics()).not.toMatch(/^blip2_trainer_loss\{/m); // no series (and no NaN) before the first step
      m.setMembership({ worldSize: 2, generation: 3, rank: 1 });
      m.setShardsPending(4);
      m.addShardsAcked(2);
      const rec = {
        step: 5, epoch: 0, generation: 3, rank: 1, worldSize: 2, losses: { itc: 1.5, itm: 0.7, itg: 4.25 }, samples: 3,
        globalSamples: 7, learningRate: 1e-4, gradNorm: 2.5,
        phaseSeconds: { data: 0.1, forward_backward: 1.2, communication: 0.4, optimizer: 0.3 },
        allReduceBytes: 4_000_000, allReduceSeconds: 0.25,
      };
      m.observeStep(rec);
      m.observeStep({ ...rec, step: 6, losses: { itc: 1.25, itm: 0.5, itg: 4 } });
      const text = await registry.metrics();
      expect(text).toMatch(/blip2_trainer_loss\{objective="itc"\} 1\.25/);
      expect(text).toMatch(/blip2_trainer_loss\{objective="itm"\} 0\.5/);
      expect(text).toMatch(/blip2_trainer_loss\{objective="itg"\} 4\b/);
      expect(text).toMatch(/blip2_trainer_steps_total 2/);
      expect(text).toMatch(/blip2_trainer_samples_total 6/);
      expect(text).toMatch(/blip2_trainer_step_phase_seconds_count\{phase="forward_backward"\} 2/);
      expect(text).toMatch(/blip2_trainer_step_phase_seconds_sum\{phase="communication"\} 0\.8/);
      expect(text).toMatch(/blip2_trainer_allreduce_bytes_total 8000000/);
      expect(text).toMatch(/blip2_trainer_allreduce_seconds_total 0\.5/);
      expect(text).toMatch(/blip2_trainer_allreduce_bus_bandwidth_bytes_per_second 16000000/);
      expect(text).toMatch(/blip2_trainer_learning_rate 0\.0001/);
      expect(text).toMatch(/blip2_trainer_grad_norm 2\.5/);
      expect(text).toMatch(/blip2_trainer_world_size 2/);
      expect(text).toMatch(/blip2_trainer_generation 3/);
      expect(text).toMatch(/blip2_trainer_shards_pending 4/);
      expect(text).toMatch(/blip2_trainer_shards_acked_total 2/);
      expect(text).toMatch(/blip2_trainer_info\{node="node-a",engine="wasm"\} 1/);
      const lines = readFileSync(join(runDir, 'metrics-node-a.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(lines.map((l) => l.step)).toEqual([5, 6]);
      expect(lines[1].losses).toEqual({ itc: 1.25, itm: 0.5, itg: 4 });
      expect(lines[1].loss).toBeCloseTo(5.75, 12);
      expect(lines[0].phaseSeconds.optimizer).toBe(0.3);
      expect(lines[0].samplesPerSec).toBeCloseTo(7 / 2, 12);
      expect(lines[0].skipped).toEqual({}); // no batch stream on this registry: nothing skipped
    } finally {
      rmSync(runDir, { recursive: true, force: true });
    }
  });

  it('exports an evaluation\'s figures only once there is one, and writes it as a kind:eval JSONL line', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-metrics-'));
    try {
      const registry = new Registry();
      const m = createTrainerMetrics({ registry, nodeId: 'node-e', runDir });
      expect(await registry.metrics()).not.toMatch(/blip2_eval_/); // a job without evaluation shows none
      m.observeEval({
        step: 20, epoch: 1, split: 'val', checkpointDir: '/ck/step-20', seconds: 3.5,
        figures: [{ task: 'retrieval', metric: 'img_r1', value: 40, baseline: 10 }, { task: 'caption', metric: 'CIDEr', value: 1.25, baseline: 0.5 }],
      });
      const text = await registry.metrics();
      expect(text).toMatch(/^blip2_eval_value\{task="retrieval",metric="img_r1"\} 40$/m);
      expect(text).toMatch(/^blip2_eval_baseline\{task="retrieval",metric="img_r1"\} 10$/m);
      expect(text).toMatch(/^blip2_eval_value\{task="caption",metric="CIDEr"\} 1\.25$/m);
      expect(text).toMatch(/^blip2_eval_step 20$/m);
      expect(text).toMatch(/^blip2_eval_seconds 3\.5$/m);
      const [line] = readFileSync(join(runDir, 'metrics-node-e.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(line).toMatchObject({ kind: 'eval', step: 20, epoch: 1, split: 'val', checkpointDir: '/ck/step-20', seconds: 3.5 });
      expect(line.eval).toEqual({ retrieval: { img_r1: { value: 40, baseline: 10 } }, caption: { CIDEr: { value: 1.25, baseline: 0.5 } } });
    } finally {
      rmSync(runDir, { recursive: true, force: true });
    }
  });
});
