// Training checkpoints: bit-exact round trips, and refusals (truncated, corrupted, missing, other model) that name the file.
import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CheckpointError, listCheckpoints, META_FILE, MODEL_FILE, OPTIMIZER_FILE, pruneCheckpoints, readCheckpoint, removeStaleTemporaries,
  writeCheckpoint, type CheckpointState,
} from './checkpoint';
import { AdamW } from './optim';

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'blip2-ckpt-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

function sampleState(step = 7): CheckpointState {
  const specs = [
    { name: 'temp', shape: [] as number[] },
    { name: 'query_tokens', shape: [1, 2, 3] },
    { name: 'qformer.layernorm.bias', shape: [3] },
  ];
  const opt = new AdamW(specs);
  const params = new Map(specs.map((s, k) => [s.name, { shape: s.shape, data: Float32Array.from({ length: s.shape.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i + k) / 3) }]));
  const w = new Map([...params].map(([n, p]) => [n, p.data]));
  for (let t = 0; t < 3; t++) opt.update(w, new Map([...w].map(([n, a]) => [n, a.map((x, i) => Math.cos(x * 7 + i + t))])), 1e-2);
  return {
    step, epoch: 1, stepInEpoch: 2, params, optimizer: opt.state(), optimizerOptions: opt.options,
    rng: { seed: 42 }, cursors: { 'coco/shard-0003': 17 }, ackedShards: ['coco/shard-0001'], configHash: 'abc123',
    parent: 'step-00000005', extra: { generation: 3 }, files: { 'ledger.json': '{"0":["a","b"]}' },
  };
}

describe('checkpoint', () => {
  it('round-trips parameters, moments and metadata bit for bit, leaving no temporary behind', () => {
    const s = sampleState();
    const dir = writeCheckpoint(root, s);
    expect(dir).toBe(join(root, 'step-00000007'));
    expect(readdirSync(root)).toEqual(['step-00000007']);
    expect(readdirSync(dir).sort()).toEqual([META_FILE, MODEL_FILE, OPTIMIZER_FILE, 'ledger.json'].sort());
    const r = readCheckpoint(dir, { configHash: 'abc123', params: [...s.params].map(([name, p]) => ({ name, shape: p.shape })) });
    expect(r.step).toBe(7);
    expect(r.epoch).toBe(1);
    expect(r.stepInEpoch).toBe(2);
    expect(r.optimizer.step).toBe(3);
    expect(r.rng).toEqual({ seed: 42 });
    expect(r.cursors).toEqual({ 'coco/shard-0003': 17 });
    expect(r.ackedShards).toEqual(['coco/shard-0001']);
    expect(r.parent).toBe('step-00000005');
    expect(r.extra).toEqual({ generation: 3 });
    expect(r.files).toEqual({ 'ledger.json': '{"0":["a","b"]}' });
    expect(r.optimizerOptions).toEqual(s.optimizerOptions);
    for (const [name, p] of s.params) {
      expect(r.params.get(name)!.shape).toEqual(p.shape);
      expect(Array.from(r.params.get(name)!.data)).toEqual(Array.from(p.data));
      expect(Array.from(r.optimizer.expAvg.get(name)!)).toEqual(Array.from(s.optimizer.expAvg.get(name)!));
      expect(Array.from(r.optimizer.expAvgSq.get(name)!)).toEqual(Array.from(s.optimizer.expAvgSq.get(name)!));
    }
    // A second checkpoint of the same step never overwrites the first.
    expect(writeCheckpoint(root, s)).toBe(join(root, 'step-00000007-1'));
    expect(listCheckpoints(root).map((c) => c.step)).toEqual([7, 7]);
  });

  it('refuses a truncated tensor file, naming it', () => {
    const dir = writeCheckpoint(root, sampleState());
    const f = join(dir, MODEL_FILE);
    truncateSync(f, readFileSync(f).byteLength - 5);
    expect(() => readCheckpoint(dir)).toThrow(CheckpointError);
    expect(() => readCheckpoint(dir)).toThrow(new RegExp(`${f}: \\d+ bytes but the checkpoint recorded \\d+ \\(truncated\\)`));
  });

  it('refuses a corrupted tensor file (one flipped byte), naming it', () => {
    const dir = writeCheckpoint(root, sampleState());
    const f = join(dir, OPTIMIZER_FILE);
    const b = readFileSync(f);
    b[b.byteLength - 3] ^= 0x40;
    writeFileSync(f, b);
    expect(() => readCheckpoint(dir)).toThrow(new RegExp(`${f}: sha256 [0-9a-f]+ does not match .* \\(corrupted\\)`));
  });

  it('refuses corrupted or truncated metadata, and a missing file', () => {
    const dir = writeCheckpoint(root, sampleState());
    const f = join(dir, META_FILE);
    const text = readFileSync(f, 'utf8');
    writeFileSync(f, text.replace('"step": 7', '"step": 8'));
    expect(() => readCheckpoint(dir)).toThrow(new RegExp(`${f}: sha256 .* \\(corrupted\\)`));
    writeFileSync(f, text.slice(0, text.length / 2));
    expect(() => readCheckpoint(dir)).toThrow(new RegExp(`${f}: not valid JSON`));
    writeFileSync(f, text);
    expect(readCheckpoint(dir).step).toBe(7);
    writeFileSync(join(dir, 'ledger.json'), '{"0":["a","c"]}');
    expect(() => readCheckpoint(dir)).toThrow(new RegExp(`${join(dir, 'ledger.json')}: sha256 .* \\(corrupted\\)`));
    writeFileSync(join(dir, 'ledger.json'), '{"0":["a","b"]}');
    rmSync(join(dir, MODEL_FILE));
    expect(() => readCheckpoint(dir)).toThrow(new RegExp(`${join(dir, MODEL_FILE)}: cannot read checkpoint file`));
  });

  it('refuses a checkpoint of another configuration or model', () => {
    const dir = writeCheckpoint(root, sampleState());
    expect(() => readCheckpoint(dir, { configHash: 'other' })).toThrow(/config hash abc123 differs from this job's other/);
    expect(() => readCheckpoint(dir, { params: [{ name: 'temp', shape: [] }, { name: 'itm_head.weight', shape: [2, 3] }] }))
      .toThrow(/missing itm_head.weight; unexpected query_tokens, qformer.layernorm.bias/);
    expect(() => readCheckpoint(dir, { params: [{ name: 'temp', shape: [1] }, { name: 'query_tokens', shape: [1, 2, 3] }, { name: 'qformer.layernorm.bias', shape: [3] }] }))
      .toThrow(/wrong shape temp \[\] ≠ \[1\]/);
  });

  it('keeps the last commit and the newest older checkpoints, never a newer one', () => {
    const dirs = [2, 4, 6, 8, 10].map((st) => writeCheckpoint(root, sampleState(st)));
    const refused = writeCheckpoint(root, sampleState(8)); // step-00000008-1, a commit that was refused
    expect(pruneCheckpoints(root, dirs[3]!, 2).sort()).toEqual([dirs[0], dirs[1], refused].sort());
    expect(listCheckpoints(root).map((c) => c.dir)).toEqual([dirs[2], dirs[3], dirs[4]]);
    expect(() => pruneCheckpoints(root, dirs[3]!, 0)).toThrow(/keep = 0 must be an integer ≥ 1/);
  });

  it('lists complete checkpoints by step and cleans temporaries left by a killed writer', () => {
    writeCheckpoint(root, sampleState(12));
    writeCheckpoint(root, sampleState(3));
    mkdirSync(join(root, '.step-00000020.tmp-999-1'));
    writeFileSync(join(root, '.step-00000020.tmp-999-1', MODEL_FILE), 'partial');
    expect(listCheckpoints(root).map((c) => c.step)).toEqual([3, 12]);
    expect(removeStaleTemporaries(root)).toEqual([join(root, '.step-00000020.tmp-999-1')]);
    expect(readdirSync(root).sort()).toEqual(['step-00000003', 'step-00000012']);
  });
});
