// vitest globalSetup for the integration project: one real nats-server (JetStream) for the run. Tests read its
// URL with `inject('natsUrl')`; tests that need their own server (to kill it) call startNatsServer() themselves.
import type { TestProject } from 'vitest/node';
import { startNatsServer, type NatsServerHandle } from './nats';

let server: NatsServerHandle | undefined;

export async function setup(project: TestProject): Promise<void> {
  server = await startNatsServer();
  project.provide('natsUrl', server.url);
}

export async function teardown(): Promise<void> {
  await server?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    natsUrl: string;
  }
}
