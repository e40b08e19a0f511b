// Shard dispatch against a real nats-server with JetStream: publish, pull, deferred acks, in-progress signals,
// redelivery, rejected descriptors.
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { planEpoch, ShardConsumer, ShardPublisher, type DatasetIndex, type LeasedShard, type ShardQueueOptions } from '../dataloader';

const index: DatasetIndex = {
  version: 1,
  datasets: [{ name: 'train', format: 'webdataset', split: 'train', samples: 2000, shards: Array.from({ length: 20 }, (_, i) => ({ path: `train/${i}.tar`, samples: 100, bytes: 1 })) }],
};

let nc: NatsConnection;
let n = 0;
const conns: NatsConnection[] = [];
const queue = (ackWaitMs: number): Omit<ShardQueueOptions, 'nc'> => {
  const name = `T${process.pid}_${Date.now()}_${n++}`;
  return { stream: name, subject: `test.${name}.shards`, durable: 'trainers', ackWaitMs, maxDeliver: 5 };
};
const newConn = async () => { const c = await connect({ servers: inject('natsUrl') }); conns.push(c); return c; };

beforeAll(async () => { nc = await newConn(); });
afterAll(async () => { await Promise.all(conns.map((c) => c.close())); });

describe('JetStream shard dispatch', () => {
  test('two trainers drain an epoch; every descriptor is leased and acked once; next() then returns null', async () => {
    const q = queue(30_000);
    const registry = new Registry();
    const pub = new ShardPublisher({ nc, ...q, registry });
    await pub.ensureStream();
    await new ShardPublisher({ nc, ...q }).ensureStream(); // a restarted coordinator: idempotent
    const plan = planEpoch({ index, epoch: 0, seed: 1 });
    expect(await pub.publishEpoch(plan)).toEqual({ published: 20, duplicates: 0 });
    // Publishing the same plan again inside the duplicate window stores nothing new.
    expect(await pub.publishEpoch(plan)).toEqual({ published: 0, duplicates: 20 });
    expect(await pub.progress()).toEqual({ pending: 20, inFlight: 0, remaining: 20, exhausted: 0 });

    const seen: string[] = [];
    const trainer = async () => {
      const c = new ShardConsumer({ nc: await newConn(), ...q });
      for (;;) {
        const lease = await c.next();
        if (!lease) return;
        seen.push(lease.descriptor.id);
        expect(lease.deliveryCount).toBe(1);
        expect(lease.cursor).toBe(lease.descriptor.start);
        await new Promise((r) => setTimeout(r, 5));
        await lease.ack();
      }
    };
    await Promise.all([trainer(), trainer()]);
    expect(seen.sort()).toEqual(plan.map((d) => d.id).sort());
    expect(await pub.progress()).toEqual({ pending: 0, inFlight: 0, remaining: 0, exhausted: 0 });
    const text = await registry.metrics();
    expect(text).toMatch(/blip2_coordinator_shards_published_total 20/);
    expect(text).toMatch(/blip2_coordinator_shards_pending 0/);
    await pub.deleteStream();
  });

  test('in-progress signals keep a lease past ack_wait; a lease with none is redelivered to another trainer', async () => {
    const q = queue(1000);
    const pub = new ShardPublisher({ nc, ...q });
    await pub.ensureStream();
    const plan = planEpoch({ index, epoch: 0, seed: 2 }).slice(0, 2);
    await pub.publishEpoch(plan);
    const a = new ShardConsumer({ nc: await newConn(), ...q }); // heartbeats every 333 ms
    const silent = new ShardConsumer({ nc: await newConn(), ...q, heartbeatMs: 3_600_000 });
    const b = new ShardConsumer({ nc: await newConn(), ...q });
    const held = (await a.next())!;
    const abandoned = (await silent.next())!; // this trainer "hangs": no signals, no ack
    const t0 = Date.now();
    const got = (await b.next())!; // waits: nothing pending, two leases held elsewhere
    expect(Date.now() - t0).toBeGreaterThanOrEqual(800);
    expect(got.descriptor.id).toBe(abandoned.descriptor.id);
    expect(got.deliveryCount).toBe(2);
    await got.ack();
    // `held` has outlived several ack_waits thanks to working(); b gets nothing more until it is acked.
    await new Promise((r) => setTimeout(r, 1500));
    expect(held.held).toBe(true);
    // A trainer with endOfEpoch 'queue-empty' does not wait for leases held elsewhere.
    const eager = new ShardConsumer({ nc: await newConn(), ...q, endOfEpoch: 'queue-empty' });
    expect(await eager.next()).toBeNull();
    expect(held.held).toBe(true);
    const drained = b.next();
    await new Promise((r) => setTimeout(r, 300));
    await held.ack();
    expect(await drained).toBeNull();
    expect(await pub.progress()).toEqual({ pending: 0, inFlight: 0, remaining: 0, exhausted: 0 });
    abandoned.nak(); // settles the local timer; the server already moved on
    await pub.deleteStream();
  });

  test('nak hands a descriptor back at once; close() naks every held lease; the cursor comes from cursorFor', async () => {
    const q = queue(30_000);
    const pub = new ShardPublisher({ nc, ...q });
    await pub.ensureStream();
    const plan = planEpoch({ index, epoch: 3, seed: 3 }).slice(0, 3);
    await pub.publishEpoch(plan);
    const a = new ShardConsumer({ nc: await newConn(), ...q });
    const leases: LeasedShard[] = [(await a.next())!, (await a.next())!];
    leases[0]!.nak();
    const cursors = new Map([[leases[1]!.descriptor.id, leases[1]!.descriptor.start + 42]]);
    a.close();
    expect(a.leases).toHaveLength(0);
    const b = new ShardConsumer({ nc: await newConn(), ...q, cursorFor: (d) => cursors.get(d.id) });
    const again: LeasedShard[] = [];
    for (let l = await b.next(); l; l = await b.next()) { again.push(l); await l.ack(); }
    expect(again.map((l) => l.descriptor.id).sort()).toEqual(plan.map((d) => d.id).sort());
    const resumed = again.find((l) => l.descriptor.id === leases[1]!.descriptor.id)!;
    expect(resumed.cursor).toBe(resumed.descriptor.start + 42);
    expect(resumed.deliveryCount).toBe(2);
    await pub.deleteStream();
  });

  test('a descriptor that does not parse is terminated, counted and never redelivered', async () => {
    const q = queue(1000);
    const pub = new ShardPublisher({ nc, ...q });
    await pub.ensureStream();
    const js = jetstream(nc);
    await js.publish(q.subject!, new TextEncoder().encode('{"v":1,"epoch":"zero"'));
    await js.publish(q.subject!, new TextEncoder().encode(JSON.stringify({ ...planEpoch({ index, epoch: 0, seed: 0 })[0]!, shard: '/etc/passwd' })));
    await pub.publishEpoch(planEpoch({ index, epoch: 0, seed: 0 }).slice(0, 1));
    const registry = new Registry();
    const c = new ShardConsumer({ nc: await newConn(), ...q, registry });
    const lease = (await c.next())!;
    expect(lease.descriptor.epoch).toBe(0);
    await lease.ack();
    // Longer than ack_wait: a terminated message would have come back by now if it were merely unacked.
    await new Promise((r) => setTimeout(r, 1300));
    expect(await c.next()).toBeNull();
    expect(await pub.progress()).toEqual({ pending: 0, inFlight: 0, remaining: 0, exhausted: 0 });
    expect(await registry.metrics()).toMatch(/blip2_trainer_data_descriptors_rejected_total\{reason="not-json"\} 1/);
    expect(await registry.metrics()).toMatch(/blip2_trainer_data_descriptors_rejected_total\{reason="schema"\} 1/);
    await pub.deleteStream();
  });

  test('a descriptor that used up max_deliver is reported as exhausted, not leased again', async () => {
    const q = { ...queue(1000), maxDeliver: 1 };
    const pub = new ShardPublisher({ nc, ...q });
    await pub.ensureStream();
    await pub.publishEpoch(planEpoch({ index, epoch: 0, seed: 4 }).slice(0, 1));
    const c = new ShardConsumer({ nc: await newConn(), ...q });
    const lease = (await c.next())!;
    lease.nak();
    expect(await c.next()).toBeNull();
    expect(await pub.progress()).toEqual({ pending: 0, inFlight: 0, remaining: 1, exhausted: 1 });
    await pub.deleteStream();
  });
});
