// The trainer's JetStream shard queue (trainer/epoch-data.ts) counts its leases where it takes them, against a real
// nats-server: leased, redelivered, acked, nacked, held and rejected descriptors, read from the Prometheus registry.
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { CaptionTokenizer, loadIndex, planEpoch, ShardPublisher } from '../dataloader';
import { JetStreamEpochData } from '../trainer';
import { makeJobDir } from './helpers/procs';

let nc: NatsConnection;
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});

/** The sum of a metric's series (one unlabelled, or one per label value) in a registry's text. */
async function value(registry: Registry, name: string): Promise<number> {
  const found = [...(await registry.metrics()).matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))];
  if (!found.length) throw new Error(`${name} is not in the scrape`);
  return found.reduce((n, m) => n + Number(m[1]), 0);
}

const SHARD_METRICS = [
  'blip2_trainer_data_shards_leased_total', 'blip2_trainer_data_shards_redelivered_total', 'blip2_trainer_data_shards_acked_total',
  'blip2_trainer_data_shards_nacked_total', 'blip2_trainer_data_shards_held', 'blip2_trainer_data_descriptors_rejected_total',
] as const;
const counts = async (r: Registry) => {
  const [leased, redelivered, acked, nacked, held, rejected] = await Promise.all(SHARD_METRICS.map((n) => value(r, n)));
  return { leased: leased!, redelivered: redelivered!, acked: acked!, nacked: nacked!, held: held!, rejected: rejected! };
};

test('leases are counted where they are taken: acked, nacked on close, redelivered to the next holder, a bad descriptor rejected', async () => {
  const dir = await makeJobDir({}, { samples: 40, shardSize: 16 }); // train split: 36 samples, 9 descriptors of 4
  const name = `EDM_${process.pid}_${Date.now()}`;
  const q = { stream: name, subject: `test.${name}.shards`, durable: 'trainers', ackWaitMs: 30_000, maxDeliver: 5 };
  const pub = new ShardPublisher({ nc, ...q });
  await pub.ensureStream();
  const plan = planEpoch({ index: loadIndex(join(dir.dataRoot, 'index.json')), datasets: ['train'], epoch: 0, seed: 1, shardSizeSamples: 4 });
  expect(plan.map((d) => d.end - d.start)).toEqual(Array(9).fill(4));
  await pub.publishEpoch(plan.slice(0, 2));
  await jetstream(nc).publish(q.subject, new TextEncoder().encode('{"not": "a descriptor"}'));
  await pub.publishEpoch(plan.slice(2));
  const tokenizer = CaptionTokenizer.fromFile(join(dir.dataRoot, 'tokenizer.json'));
  const data = (registry: Registry) => new JetStreamEpochData({
    nc, stream: q.stream, durable: q.durable, ackWaitMs: q.ackWaitMs, pollMs: 1000, dataRoot: dir.dataRoot, tokenizer, batchSize: 4, workers: 0, registry,
  });
  const open = { cursorFor: () => undefined, skip: () => false };

  // A: one batch (one whole descriptor of 4 samples), acked; then A stops and hands its other leases back.
  const ra = new Registry();
  const a = data(ra);
  const sa = a.open(0, open);
  const first = await sa.next();
  expect(first.done).toBe(false);
  const batch = first.value!;
  expect(batch.completed.length).toBe(1);
  const during = await counts(ra);
  expect(during.leased).toBeGreaterThanOrEqual(1);
  expect(during.held).toBe(during.leased);
  expect(during.acked + during.nacked).toBe(0);
  await batch.completed[0]!.ack();
  await sa.close();
  a.close();
  const after = await counts(ra);
  expect(after.acked).toBe(1);
  expect(after.held).toBe(0);
  expect(after.leased).toBe(after.acked + after.nacked);
  expect(after.redelivered).toBe(0);

  // B drains the rest: the descriptors A handed back come to it a second time (redelivered), and whoever met the
  // bad message rejected it.
  const rb = new Registry();
  const b = data(rb);
  const sb = b.open(0, open);
  let samples = 0;
  for (let r = await sb.next(); !r.done; r = await sb.next()) {
    samples += r.value.batchSize;
    for (const l of r.value.completed) await l.ack();
  }
  await sb.close();
  b.close();
  const end = await counts(rb);
  expect(samples).toBe(32);
  expect(end.leased).toBe(8);
  expect(end.acked).toBe(8);
  expect(end.held).toBe(0);
  expect(end.redelivered).toBe(after.nacked);
  expect(after.rejected + end.rejected).toBe(1);
  expect(await pub.progress()).toMatchObject({ pending: 0, inFlight: 0, remaining: 0 });
  await pub.deleteStream();
});
