// The key property of the distributed step: one synchronous step across 2 and 3 trainer processes, over real gRPC
// collectives, gives the one-process loss and gradient of the same global batch (fp32 tolerance), also with
// unequal and empty per-rank batches; and the hard-negative sampler draws the same negatives at any world shape.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initEngine } from '../trainer/engine';
import { createLocalGroup } from '../trainer/local-group';
import { Stage1Runtime } from '../trainer/stage1-runtime';
import { distributedStage1Step } from '../trainer/step';
import { compareGrads, fixtureParams, makeGlobalBatch, referenceStep, sliceBatch } from '../trainer/testing/stage1-fixture';
import type { StepRankConfig } from './fixtures/step-rank';

const script = fileURLToPath(new URL('./fixtures/step-rank.ts', import.meta.url));

interface Proc {
  child: ChildProcess;
  events: Record<string, unknown>[];
  stderr: string;
  exited: Promise<number>;
}

function startRank(cfg: StepRankConfig): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', script, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const p: Proc = { child, events: [], stderr: '', exited: new Promise((r) => child.on('exit', (c) => r(c ?? 128))) };
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        p.events.push(JSON.parse(line));
      } catch {
        p.stderr += line + '\n';
      }
    }
  });
  child.stderr!.on('data', (d: Buffer) => (p.stderr += d.toString()));
  return p;
}

async function waitEvent(p: Proc, event: string, timeoutMs: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = p.events.find((x) => x.event === event || x.event === 'error');
    if (e?.event === 'error') throw new Error(`rank failed: ${String(e.message)}\n${p.stderr}`);
    if (e) return e;
    if (p.child.exitCode !== null) throw new Error(`rank exited ${p.child.exitCode} before ${event}:\n${p.stderr}`);
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${event}:\n${p.stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs one step across `sizes.length` processes; returns each rank's gradient and result. */
async function runWorld(sizes: number[], negatives: 'given' | 'sample', seed: number) {
  const dir = mkdtempSync(join(tmpdir(), 'blip2-step-'));
  const procs = sizes.map((_, rank) => startRank({ sizes, rank, seed, negatives, dir, jobId: 'step-test', token: 'secret' }));
  try {
    const ports = await Promise.all(procs.map((p) => waitEvent(p, 'listening', 60_000).then((e) => e.port as number)));
    const peers = ports.map((port, rank) => ({ rank, host: '127.0.0.1', port }));
    procs.forEach((p, rank) => p.child.stdin!.write(JSON.stringify({ generation: 1, rank, peers }) + '\n'));
    await Promise.all(procs.map((p) => waitEvent(p, 'done', 120_000)));
    expect(await Promise.all(procs.map((p) => p.exited))).toEqual(sizes.map(() => 0));
    return sizes.map((_, r) => {
      const res = JSON.parse(readFileSync(join(dir, `result.r${r}.json`), 'utf8')) as {
        losses: { itc: number; itm: number; itg: number }; globalBatch: number; names: string[]; negImageIdx: number[]; negTextIdx: number[];
      };
      const raw = readFileSync(join(dir, `grads.r${r}.bin`));
      const flat = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
      return { ...res, flat };
    });
  } finally {
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

function unflatten(flat: Float32Array, names: string[], like: Map<string, Float32Array>): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  let o = 0;
  for (const n of names) {
    const len = like.get(n)!.length;
    out.set(n, flat.subarray(o, o + len));
    o += len;
  }
  expect(o).toBe(flat.length);
  return out;
}

beforeAll(async () => {
  await initEngine({ engine: 'cpu' });
});
afterAll(() => undefined);

describe('distributed stage-1 step across trainer processes (gRPC collectives)', () => {
  it.each([
    { sizes: [1, 4] },
    { sizes: [2, 1, 3] },
    { sizes: [3, 0, 2] },
  ])('world $sizes gives the one-process gradient of the global batch (fixed negatives)', async ({ sizes }) => {
    const B = sizes.reduce((a, c) => a + c, 0);
    const ref = referenceStep(makeGlobalBatch(B, 5));
    const ranks = await runWorld(sizes, 'given', 5);
    for (const r of ranks) {
      expect(r.globalBatch).toBe(B);
      expect(r.losses.itc).toBeCloseTo(ref.losses.itc, 5);
      expect(r.losses.itm).toBeCloseTo(ref.losses.itm, 5);
      expect(r.losses.itg).toBeCloseTo(ref.losses.itg, 5);
      expect(compareGrads(unflatten(r.flat, r.names, ref.grads), ref.grads)).toEqual([]);
      // Every rank holds the same bits, so parameters stay identical after the update.
      expect(Buffer.from(r.flat.buffer).equals(Buffer.from(ranks[0]!.flat.buffer))).toBe(true);
    }
  });

  it('samples the same hard negatives over the global batch as one process, and the matching gradient', async () => {
    const sizes = [2, 3, 1];
    const ranks = await runWorld(sizes, 'sample', 8);
    const negImageIdx = ranks.flatMap((r) => r.negImageIdx);
    const negTextIdx = ranks.flatMap((r) => r.negTextIdx);
    // One process over the whole batch, in this process.
    const g = makeGlobalBatch(6, 8);
    const rt = new Stage1Runtime(g.config, fixtureParams(g.config));
    const single = (await distributedStage1Step(rt, createLocalGroup(1)[0]!, sliceBatch(g, 0, 6), { kind: 'sample', seed: 42, step: 3 }))!;
    rt.dispose();
    expect(negImageIdx).toEqual(Array.from(single.negImageIdx));
    expect(negTextIdx).toEqual(Array.from(single.negTextIdx));
    // Several negatives live on another rank than the row that uses them (what the fetch is for).
    const owner = (gi: number) => (gi < 2 ? 0 : gi < 5 ? 1 : 2);
    expect(negImageIdx.filter((n, i) => owner(n) !== owner(i)).length).toBeGreaterThan(0);
    const ref = referenceStep({ ...g, negImageIdx: Int32Array.from(negImageIdx), negTextIdx: Int32Array.from(negTextIdx) });
    for (const r of ranks) expect(compareGrads(unflatten(r.flat, r.names, ref.grads), ref.grads)).toEqual([]);
  });
});
