/**
 * Shared Prometheus helpers: one registry per process (with the process's default metrics and constant labels)
 * and a small `/metrics` HTTP server. Each process defines its own metrics module on the registry it is given;
 * names follow `blip2_<process>_<what>_<unit>`.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry, collectDefaultMetrics } from 'prom-client';

export interface CreateRegistryOptions {
  /** Labels on every series of this process, e.g. { job_id, node }. Default: none. */
  labels?: Record<string, string>;
  /** Collect Node's process metrics (CPU, memory, event loop lag). Default: true. */
  defaultMetrics?: boolean;
}

export function createRegistry(o: CreateRegistryOptions = {}): Registry {
  const registry = new Registry();
  if (o.labels) registry.setDefaultLabels(o.labels);
  if (o.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'blip2_' });
  return registry;
}

export interface MetricsServer {
  /** host:port it listens on. */
  address: string;
  port: number;
  close(): Promise<void>;
}

export interface MetricsServerOptions {
  /** Interface. Default: 127.0.0.1. */
  host?: string;
  /** Port; 0 picks a free one. Default: 0. */
  port?: number;
}

/** Serves `GET /metrics` (Prometheus text format) and `GET /healthz` for the registry. */
export async function serveMetrics(registry: Registry, o: MetricsServerOptions = {}): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/metrics') {
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(text);
        },
        (err: Error) => {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`metrics collection failed: ${err.message}\n`);
        },
      );
    } else if (req.method === 'GET' && path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: try /metrics\n');
    }
  });
  const host = o.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(new Error(`metrics server could not listen on ${host}:${o.port ?? 0}: ${e.code ?? e.message}`)),
    );
    server.listen(o.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    address: `${host}:${port}`,
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
