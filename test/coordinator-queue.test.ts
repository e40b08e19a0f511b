/**
 * The coordinator's side of the shard queue against a real nats-server: epoch publishing is deduplicated, and a
 * queue rebuild (new generation) leaves exactly the uncommitted descriptors, once each, in plan order — also when
 * the rebuild is done twice (a coordinator that crashed in the middle of one).
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { loadJobConfig } from '../common';
import { DataEpochPublisher } from '../coordinator';
import { parseDescriptor, shardQueueOptions } from '../dataloader';
import { makeJobDir } from './helpers/procs';

let nc: NatsConnection;
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc.close();
});

test('publishing is idempotent; a rebuild, even done twice, queues each uncommitted descriptor once, in plan order', async () => {
  const dir = await makeJobDir({ job: { id: `queue-${process.pid}` }, data: { samplesPerShard: 8 } }, { samples: 40, shardSize: 16 });
  const { config } = loadJobConfig({ file: dir.configFile, env: {} });
  const pub = new DataEpochPublisher({ nc, config });
  const q = shardQueueOptions(config, nc);
  const jsm = await jetstreamManager(nc);
  const plan = pub.plan(0).map((d) => d.id);
  expect(plan).toHaveLength(5);

  expect((await pub.publishEpoch(0)).shardKeys).toEqual(plan);
  await pub.publishEpoch(0); // a coordinator restarted before recording the publish
  expect((await jsm.streams.info(q.stream)).state.messages).toBe(5);

  // A trainer of generation 1 holds two leases, then the world changes with the first descriptor committed.
  const consumer = await jetstream(nc).consumers.get(q.stream, q.durable);
  const held = [await consumer.next({ expires: 2000 }), await consumer.next({ expires: 2000 })];
  expect(held.map((m) => parseDescriptor(m!.data).id)).toEqual(plan.slice(0, 2));
  const committed = [plan[0]!];
  await pub.resetQueue(0, 2, committed);
  await pub.resetQueue(0, 2, committed); // interrupted and done again
  expect((await jsm.streams.info(q.stream)).state.messages).toBe(4);
  expect(await held[0]!.ackAck()).toBe(true); // the old generation's late ack is harmless

  const seen: string[] = [];
  for (;;) {
    const m = await consumer.next({ expires: 1000 });
    if (!m) break;
    seen.push(parseDescriptor(m.data).id);
    await m.ackAck();
  }
  expect(seen).toEqual(plan.slice(1));
  await pub.deleteStream();
});
