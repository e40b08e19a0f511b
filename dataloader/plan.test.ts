// planEpoch as a pure function of (index, epoch, seed), and shard descriptors' encoding.
import { describe, expect, test } from 'vitest';
import type { DatasetIndex } from './dataset-index';
import { descriptorId, encodeDescriptor, parseDescriptor, type ShardDescriptor } from './descriptor';
import { DescriptorError } from './errors';
import { SampleLedger } from './ledger';
import { planEpoch } from './plan';

const index: DatasetIndex = {
  version: 1,
  datasets: [
    { name: 'train', format: 'webdataset', split: 'train', samples: 2500, shards: Array.from({ length: 5 }, (_, i) => ({ path: `train/${i}.tar`, samples: 500, bytes: 1 })) },
    { name: 'cc', format: 'jsonl', imageRoot: 'images', samples: 1234, shards: [{ path: 'cc.jsonl', samples: 1234, bytes: 1 }] },
    { name: 'val', format: 'webdataset', split: 'val', samples: 100, shards: [{ path: 'val/0.tar', samples: 100, bytes: 1 }] },
  ],
};

describe('planEpoch', () => {
  test('is a pure function of (index, epoch, seed)', () => {
    expect(planEpoch({ index, epoch: 2, seed: 7 })).toEqual(planEpoch({ index, epoch: 2, seed: 7 }));
    const ids = (p: ShardDescriptor[]) => p.map((d) => `${d.shard}#${d.start}`);
    expect(ids(planEpoch({ index, epoch: 3, seed: 7 }))).not.toEqual(ids(planEpoch({ index, epoch: 2, seed: 7 })));
    expect(ids(planEpoch({ index, epoch: 2, seed: 8 }))).not.toEqual(ids(planEpoch({ index, epoch: 2, seed: 7 })));
  });

  test.each([1, 100, 300, 10_000])('covers every training sample exactly once (shardSizeSamples %i)', (size) => {
    const plan = planEpoch({ index, epoch: 0, seed: 1, shardSizeSamples: size });
    const covered = new Map<string, number>();
    for (const d of plan) {
      expect(d.end - d.start).toBeLessThanOrEqual(size);
      for (let o = d.start; o < d.end; o++) covered.set(`${d.shard}:${o}`, (covered.get(`${d.shard}:${o}`) ?? 0) + 1);
    }
    expect(covered.size).toBe(2500 + 1234);
    expect([...covered.values()].every((c) => c === 1)).toBe(true);
    expect(plan.some((d) => d.dataset === 'val')).toBe(false);
    expect(plan.map((d) => d.order)).toEqual(plan.map((_, i) => i));
    expect(new Set(plan.map((d) => d.id)).size).toBe(plan.length);
  });

  test('names a dataset that is not in the index', () => {
    expect(() => planEpoch({ index, epoch: 0, seed: 0, datasets: ['laion'] })).toThrow(/laion.*not in the index/);
  });
});

describe('shard descriptors', () => {
  const good = planEpoch({ index, epoch: 4, seed: 9, shardSizeSamples: 200 })[0]!;

  test('round-trip through the wire format', () => {
    expect(parseDescriptor(encodeDescriptor(good))).toEqual(good);
    expect(good.id).toBe(descriptorId(good));
  });

  test('a shard beside the data root (`..`, an index written outside it) parses: its paths resolve from the index folder', () => {
    const d = { ...good, shard: '../shards/00000.tar', imageRoot: '../images' };
    const text = JSON.stringify({ ...d, id: descriptorId(d) });
    expect(parseDescriptor(text).shard).toBe('../shards/00000.tar');
  });

  test.each([
    ['not JSON', '{"v":1,', /not JSON/],
    ['an array', '[1,2]', /must be a JSON object/],
    ['a wrong version', JSON.stringify({ ...good, v: 2 }), /v must be 1/],
    ['an empty range', JSON.stringify({ ...good, end: good.start }), /start < end/],
    ['an absolute path', JSON.stringify({ ...good, shard: '/etc/passwd' }), /path relative to the data root/],
    ['an unknown format', JSON.stringify({ ...good, format: 'parquet' }), /format must be one of/],
    ['a forged id', JSON.stringify({ ...good, id: 'x' }), /id must be/],
  ])('rejects %s with the broken rule', (_, text, rule) => {
    expect(() => parseDescriptor(text)).toThrow(DescriptorError);
    expect(() => parseDescriptor(text)).toThrow(rule);
  });
});

describe('SampleLedger', () => {
  test('finds missing, duplicated and unexpected ids', () => {
    const l = new SampleLedger();
    l.record(0, ['a', 'b']);
    l.record(0, ['b', 'x']);
    l.record(1, ['a']);
    const c = l.check(0, ['a', 'b', 'c']);
    expect(c.ok).toBe(false);
    expect(c.missing).toEqual(['c']);
    expect(c.duplicates).toEqual([{ id: 'b', count: 2 }]);
    expect(c.unexpected).toEqual(['x']);
    expect(l.check(1, ['a']).ok).toBe(true);
    expect(l.size(0)).toBe(4);
  });
});
