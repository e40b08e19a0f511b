/**
 * Shared Prometheus helpers: one registry per process (with Node's default metrics under their usual `process_*`
 * and `nodejs_*` names, and constant labels) and a small HTTP server for `/metrics`, `/healthz` and `/readyz`.
 * Each process defines its own metrics module on the registry it is given; names follow
 * `blip2_<process>_<what>_<unit>`.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { Probe } from './health';

export interface CreateRegistryOptions {
  /** Labels on every series of this process, e.g. { job_id, node }. Default: none. */
  labels?: Record<string, string>;
  /** Collect Node's process metrics (CPU, memory, event loop lag). Default: true. */
  defaultMetrics?: boolean;
}

/**
 * prom-client's default gauges that end in `_total`, which `promtool check metrics` refuses for a gauge; the same
 * counts stay available by type (`sum(nodejs_active_handles)`).
 */
const LINT_REFUSED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

export function createRegistry(o: CreateRegistryOptions = {}): Registry {
  const registry = new Registry();
  if (o.labels) registry.setDefaultLabels(o.labels);
  if (o.defaultMetrics ?? true) {
    // No prefix: stock Node.js dashboards query `process_cpu_seconds_total`, `nodejs_heap_size_used_bytes`, ...
    collectDefaultMetrics({ register: registry });
    for (const name of LINT_REFUSED_DEFAULTS) registry.removeSingleMetric(name);
  }
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
  /** `GET /healthz`: is the process alive (its main loop ran recently)? Default: always ok. */
  health?: Probe;
  /** `GET /readyz`: is the process doing its work (a trainer holding a generation)? Default: always ok. */
  ready?: Probe;
}

/**
 * Serves `GET /metrics` (Prometheus text format), `GET /healthz` and `GET /readyz` (200 with `ok: <detail>`, or
 * 503 with the reason) for the registry.
 */
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
    } else if (req.method === 'GET' && (path === '/healthz' || path === '/readyz')) {
      const probe = path === '/healthz' ? o.health : o.ready;
      const r = probe ? probe() : { ok: true, detail: 'no check' };
      res.writeHead(r.ok ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(`${r.ok ? 'ok' : 'not ok'}: ${r.detail}\n`);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: try /metrics, /healthz or /readyz\n');
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
