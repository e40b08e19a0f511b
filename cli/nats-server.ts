/**
 * Starts a real nats-server with JetStream on a free loopback port in a temporary directory, for tests and for
 * `blip2 launch` when the config names no server. Stops it (and removes the directory) on `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServerHandle {
  url: string;
  port: number;
  storeDir: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface StartNatsServerOptions {
  /** nats-server binary. Default: $NATS_SERVER_BIN or `nats-server` on PATH. */
  binary?: string;
  /** JetStream store directory, kept on stop() (a run dir's `nats/`, so a relaunch continues the job).
   *  Default: a temporary directory, removed on stop(). */
  storeDir?: string;
  /** Port. Default: a free one. */
  port?: number;
  /** Run it in its own process group, so a terminal's Ctrl-C does not reach it. Default: false. */
  detached?: boolean;
  /**
   * Require this user and password from every client. They go into a config file of mode 0600 in the store
   * directory (`auth.conf`), never on the command line, where any local user could read them. Default: no auth.
   */
  auth?: { user: string; password: string };
}

export async function startNatsServer(o: StartNatsServerOptions | string = {}): Promise<NatsServerHandle> {
  const opts = typeof o === 'string' ? { binary: o } : o;
  const binary = opts.binary ?? process.env.NATS_SERVER_BIN ?? 'nats-server';
  const port = opts.port ?? (await freePort());
  const keepStore = opts.storeDir !== undefined;
  if (opts.storeDir) mkdirSync(opts.storeDir, { recursive: true });
  const storeDir = opts.storeDir ?? mkdtempSync(join(tmpdir(), 'blip2-nats-'));
  const args = ['-js', '-sd', storeDir, '-a', '127.0.0.1', '-p', String(port)];
  if (opts.auth) {
    const conf = join(storeDir, 'auth.conf');
    writeFileSync(conf, `authorization {\n  user: ${JSON.stringify(opts.auth.user)}\n  password: ${JSON.stringify(opts.auth.password)}\n}\n`, { mode: 0o600 });
    chmodSync(conf, 0o600); // an existing file keeps its mode on write
    args.unshift('-c', conf);
  }
  const child = spawn(binary, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: opts.detached ?? false,
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<never>((_, reject) =>
    child.once('error', (e) => reject(new Error(`could not start ${binary}: ${e.message} (install Debian's nats-server)`))),
  );
  await Promise.race([waitForPort(port, 10_000), exited]).catch((e) => {
    child.kill('SIGKILL');
    throw new Error(`${(e as Error).message}\n${stderr}`);
  });
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    process: child,
    async stop() {
      if (child.exitCode === null) {
        const done = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([done, new Promise((r) => setTimeout(r, 5000).unref())]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      if (!keepStore) rmSync(storeDir, { recursive: true, force: true });
    },
  };
}
