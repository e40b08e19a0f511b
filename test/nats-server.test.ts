// The test harness itself: the nats-server started by globalSetup has JetStream enabled and answers.
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { inject, expect, test } from 'vitest';

test('global nats-server answers and has JetStream', async () => {
  const nc = await connect({ servers: inject('natsUrl') });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.getAccountInfo();
    expect(info.limits).toBeDefined();
    const rtt = await nc.rtt();
    expect(rtt).toBeGreaterThanOrEqual(0);
  } finally {
    await nc.close();
  }
});
