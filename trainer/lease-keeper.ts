/** The main-thread side of the lease keeper (see lease-keeper-worker.mjs for why leases are renewed off-thread). */
import { Worker } from 'node:worker_threads';
import type { NatsConnection } from '@nats-io/transport-node';
import { natsConnectDataOf } from '../common';

export interface LeaseKeeperOptions {
  /** How often each held lease is renewed, ms (a third of the queue's ack wait). */
  periodMs: number;
  /** Stop renewing when this thread has not run for this long (a hung trainer). Default 120 000 ms. */
  stallMs?: number;
  name?: string;
}

export class LeaseKeeper {
  private readonly ticker: NodeJS.Timeout;

  private constructor(private readonly worker: Worker, periodMs: number) {
    this.ticker = setInterval(() => worker.postMessage({ type: 'tick' }), Math.max(50, Math.floor(periodMs / 2)));
    this.ticker.unref();
  }

  /** Starts the worker for a connection opened by connectJobNats; undefined for another connection (no options to reuse). */
  static async start(nc: NatsConnection, o: LeaseKeeperOptions): Promise<LeaseKeeper | undefined> {
    const data = natsConnectDataOf(nc);
    if (!data) return undefined;
    const worker = new Worker(new URL('./lease-keeper-worker.mjs', import.meta.url), {
      workerData: {
        ...data, creds: data.creds ? Array.from(data.creds) : undefined,
        periodMs: o.periodMs, stallMs: o.stallMs ?? 120_000, name: o.name ?? 'blip2-lease-keeper',
      },
    });
    worker.unref();
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    return new LeaseKeeper(worker, o.periodMs);
  }

  hold(reply: string): void {
    this.worker.postMessage({ type: 'hold', reply });
  }

  release(reply: string): void {
    this.worker.postMessage({ type: 'release', reply });
  }

  async stop(): Promise<void> {
    clearInterval(this.ticker);
    const exited = new Promise<void>((r) => this.worker.once('exit', () => r()));
    this.worker.postMessage({ type: 'stop' });
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
    await this.worker.terminate();
  }
}

/** The ack subject of a JetStream message (not in JsMsg's public type; every delivered message has one). */
export function ackSubjectOf(msg: unknown): string | undefined {
  return (msg as { msg?: { reply?: string } }).msg?.reply;
}
