/**
 * Ring collectives between separate rank processes over real gRPC sockets on 127.0.0.1: exact and float sums,
 * means, fp16 wire, all-gather of unequal blocks, broadcast, barrier, re-connect for a new generation.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as data from './fixtures/collective-data';
import { startWorld, type World } from './fixtures/collective-world';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const load = (dir: string, name: string, rank: number) => {
  const b = readFileSync(join(dir, `${name}.r${rank}.bin`));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

/** Σ_r f(r) in float64, and Σ_r |f(r)| (for error bounds). */
function exactSum(n: number, f: (rank: number) => Float32Array, weight: (rank: number) => number = () => 1) {
  const parts = Array.from({ length: n }, (_, r) => f(r));
  const len = parts[0]!.length;
  const sum = new Float64Array(len);
  const abs = new Float64Array(len);
  for (let r = 0; r < n; r++) {
    const w = weight(r);
    const p = parts[r]!;
    for (let i = 0; i < len; i++) {
      sum[i]! += w * p[i]!;
      abs[i]! += Math.abs(w * p[i]!);
    }
  }
  return { sum, abs };
}

/** Largest |got - want| / bound over the elements (≤ 1 passes). */
function worstRatio(got: Float32Array, want: Float64Array, bound: (i: number) => number): number {
  expect(got.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const r = Math.abs(got[i]! - want[i]!) / bound(i);
    if (!(r <= worst)) worst = r; // NaN propagates as a failure
  }
  return worst;
}

const u32 = 2 ** -24; // unit roundoff of fp32
const u16 = 2 ** -11; // unit roundoff of fp16

describe.each([2, 3, 4])('ring of %i rank processes', (n) => {
  let world: World | undefined;
  afterAll(() => world?.kill());

  it('all-reduces, all-gathers, broadcasts and re-connects for a new generation', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'collective-'));
    dirs.push(dir);
    // Small chunks and buckets so that every path (many chunks per segment, packed buckets, a tensor larger than
    // a bucket reduced in place) runs on modest sizes.
    world = await startWorld(n, {
      scenario: 'suite', dir, jobId: 'job-test', token: 'secret-token', timeoutMs: 20_000,
      chunkBytes: 64 * 1024, bucketCapBytes: 256 * 1024, generations: 2,
      // Three ranks spread frames over two streams per link (frames arrive out of order across streams).
      streamsPerLink: n === 3 ? 2 : 1,
      // Two ranks use grpc-js's own message path; three and four write and read frames on the HTTP/2 streams.
      directFraming: n !== 2,
    });
    world.join(1);
    await world.waitAll('generation-done', 60_000);
    // Generation 2: every process gets another rank.
    const rankOf = (i: number) => (i + 1) % n;
    world.join(2, rankOf);
    await world.waitAll('done', 60_000);
    // Every stream of every rank took the path it was configured for (a silent fallback would fail here).
    const streams = n === 3 ? 2 : 1;
    for (const p of world.procs) {
      const connected = p.events.filter((ev) => ev.event === 'connected');
      expect(connected).toHaveLength(2);
      for (const e of connected) {
        expect(e.direct).toEqual(n === 2 ? { send: 0, receive: 0 } : { send: streams, receive: streams });
      }
    }

    const ranks = Array.from({ length: n }, (_, r) => r);
    // 1. Integer-valued sums are exact, including sizes not divisible by N, smaller than N, and empty.
    data.suiteSizes(n).forEach((len, t) => {
      const { sum } = exactSum(n, (r) => data.intData(r, len, t));
      for (const r of ranks) expect(Array.from(load(dir, `ints${t}`, r))).toEqual(Array.from(sum));
    });
    // 2. Random data: within fp32 rounding of the float64 sum; sum, mean and weighted mean. Every rank ends with
    //    the same bits.
    const rnd = exactSum(n, (r) => data.randData(r, data.randSize, 1));
    for (const r of ranks) {
      expect(worstRatio(load(dir, 'randsum', r), rnd.sum, (i) => 2 * n * u32 * rnd.abs[i]! + 1e-30)).toBeLessThanOrEqual(1);
      const mean = rnd.sum.map((x) => x / n);
      expect(worstRatio(load(dir, 'randmean', r), mean, (i) => (2 * n * u32 * rnd.abs[i]!) / n + 1e-30)).toBeLessThanOrEqual(1);
      expect(load(dir, 'randsum', r)).toEqual(load(dir, 'randsum', 0));
    }
    const w = (r: number) => data.weights[r % data.weights.length]!;
    const wsum = ranks.reduce((s, r) => s + w(r), 0);
    const weighted = exactSum(n, (r) => data.randData(r, data.randSize, 1), w);
    for (const r of ranks) {
      const want = weighted.sum.map((x) => x / wsum);
      expect(worstRatio(load(dir, 'weighted', r), want, (i) => (4 * n * u32 * weighted.abs[i]!) / wsum + 1e-30)).toBeLessThanOrEqual(1);
    }
    // 3. fp16 on the wire: within fp16 rounding (one rounding per hop), identical on every rank, and visibly not
    //    fp32 (so the wire really carried fp16).
    const h = exactSum(n, (r) => data.randData(r, data.fp16Size, 2));
    for (const r of ranks) {
      const got = load(dir, 'fp16', r);
      expect(worstRatio(got, h.sum, (i) => (n + 1) * u16 * h.abs[i]! + 1e-7)).toBeLessThanOrEqual(1);
      expect(worstRatio(got, h.sum, (i) => 2 * n * u32 * h.abs[i]! + 1e-30)).toBeGreaterThan(1);
      expect(got).toEqual(load(dir, 'fp16', 0));
    }
    // 4. All-gather of unequal blocks (one rank has zero rows), in rank order on every rank.
    for (const r of ranks) {
      for (const from of ranks) {
        const got = load(dir, `gather.from${from}`, r);
        expect(got.length).toBe(data.gatherRows[from]! * data.gatherWidth);
        expect(got).toEqual(data.gatherBlock(from, data.gatherWidth));
      }
    }
    // 5. Broadcast from the last rank.
    const root = data.randData(n - 1, data.broadcastSize, 3);
    for (const r of ranks) expect(load(dir, 'broadcast', r)).toEqual(root);
    // 6. Generation 2 with permuted ranks: sums and gathers follow the new ranks.
    const g2 = exactSum(n, (r) => data.intData(r, 50_001, 9));
    for (const r of ranks) {
      expect(Array.from(load(dir, 'gen2', r))).toEqual(Array.from(g2.sum));
      for (const from of ranks) expect(load(dir, `gen2.gather.from${from}`, r)).toEqual(data.gatherBlock(from, data.gatherWidth));
    }
  });
});
