/**
 * Starts a real nats-server with JetStream on a free loopback port in a temporary directory, for tests and for
 * `blip2 launch` when the config names no server. Stops it (and removes the directory) on `stop()`. Also: the
 * users and permissions of the job's roles on the server `launch` starts (`jobNatsPermissions`).
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
  /**
   * Several users, each with its own permissions (written into the same 0600 `auth.conf`); replaces `auth`.
   * `jobNatsUsers` builds the job's three (coordinator, trainer, launcher).
   */
  users?: NatsUser[];
  /** Write the server's log to this file (`-l`); default: none. */
  logFile?: string;
}

/** A NATS user and what it may publish and subscribe to (nats-server's `permissions` block; deny wins over allow). */
export interface NatsUser {
  user: string;
  password: string;
  permissions?: {
    publish?: { allow?: string[]; deny?: string[] };
    subscribe?: { allow?: string[]; deny?: string[] };
    /** May answer requests sent to it (publish to the requester's reply subject only). */
    allowResponses?: boolean;
  };
}

/** The role of a process of the job on its NATS. */
export type NatsRole = 'coordinator' | 'trainer' | 'launcher';

/**
 * Permissions of each role on the job's own nats-server (subjects of `jobSubjects`, JetStream API subjects as
 * nats-server 2.9 names them: `$JS.API.<what>.<stream>…`, a KV put is a publish on `$KV.<bucket>.<key>`):
 *  - coordinator: the job's subjects (it answers control requests), the whole JetStream API (it creates the KV
 *    bucket, the shard stream and its consumer, purges and republishes the queue) and the job's KV bucket;
 *  - trainer: control requests, heartbeats, progress; reading the KV bucket (get, watch); pulling, acking and
 *    removing (a malformed one) shard descriptors; never a KV put, nor creating, purging or deleting a stream;
 *  - launcher (also `blip2 status`, `blip2 stop`): reading the KV bucket, the progress subject, and control
 *    requests (a stop, which the coordinator checks against the job token); nothing else.
 */
export function jobNatsPermissions(role: NatsRole, s: { control: string; heartbeat: string; progress: string; bucket: string; shardStream: string; shardSubject: string }): NonNullable<NatsUser['permissions']> {
  const kvStream = `KV_${s.bucket}`;
  const kvRead = [
    '$JS.API.INFO', `$JS.API.STREAM.INFO.${kvStream}`, `$JS.API.DIRECT.GET.${kvStream}`, `$JS.API.DIRECT.GET.${kvStream}.>`,
    `$JS.API.STREAM.MSG.GET.${kvStream}`, `$JS.API.CONSUMER.*.${kvStream}`, `$JS.API.CONSUMER.*.${kvStream}.>`, `$JS.FC.${kvStream}.>`,
  ];
  // Deny wins over allow in nats-server: these hold whatever the allow lists say.
  const neverWrite = [`$KV.${s.bucket}.>`, '$JS.API.STREAM.CREATE.>', '$JS.API.STREAM.UPDATE.>', '$JS.API.STREAM.DELETE.>', '$JS.API.STREAM.PURGE.>', `$JS.API.STREAM.MSG.DELETE.${kvStream}`];
  if (role === 'coordinator') {
    const job = s.control.replace(/\.control$/, '');
    return {
      publish: { allow: [`${job}.>`, '$JS.API.>', `$KV.${s.bucket}.>`, '$JS.ACK.>', '$JS.FC.>'] },
      subscribe: { allow: [`${job}.>`, '_INBOX.>'] },
      allowResponses: true,
    };
  }
  if (role === 'trainer') {
    return {
      publish: {
        allow: [
          s.control, s.heartbeat, s.progress, ...kvRead,
          `$JS.API.STREAM.INFO.${s.shardStream}`, `$JS.API.CONSUMER.INFO.${s.shardStream}.>`, `$JS.API.CONSUMER.MSG.NEXT.${s.shardStream}.>`,
          `$JS.API.STREAM.MSG.DELETE.${s.shardStream}`, `$JS.ACK.${s.shardStream}.>`,
        ],
        deny: neverWrite,
      },
      subscribe: { allow: ['_INBOX.>'] },
    };
  }
  return {
    publish: { allow: [s.control, ...kvRead], deny: neverWrite },
    subscribe: { allow: [s.progress, '_INBOX.>'] },
  };
}

/** nats-server's config text for these users (an `authorization { users = [...] }` block). */
export function natsAuthConf(users: NatsUser[]): string {
  const list = (l: string[] | undefined) => JSON.stringify(l ?? []);
  const rules = (r: { allow?: string[]; deny?: string[] } | undefined) =>
    r ? `{ ${r.allow ? `allow: ${list(r.allow)}` : ''}${r.allow && r.deny ? ', ' : ''}${r.deny ? `deny: ${list(r.deny)}` : ''} }` : '';
  const lines = users.map((u) => {
    const p = u.permissions;
    const perms = p
      ? `, permissions: { ${[p.publish ? `publish: ${rules(p.publish)}` : '', p.subscribe ? `subscribe: ${rules(p.subscribe)}` : '', p.allowResponses ? 'allow_responses: true' : '']
        .filter(Boolean).join(', ')} }`
      : '';
    return `    { user: ${JSON.stringify(u.user)}, password: ${JSON.stringify(u.password)}${perms} }`;
  });
  return `authorization {\n  users = [\n${lines.join(',\n')}\n  ]\n}\n`;
}

export async function startNatsServer(o: StartNatsServerOptions | string = {}): Promise<NatsServerHandle> {
  const opts = typeof o === 'string' ? { binary: o } : o;
  const binary = opts.binary ?? process.env.NATS_SERVER_BIN ?? 'nats-server';
  const port = opts.port ?? (await freePort());
  const keepStore = opts.storeDir !== undefined;
  if (opts.storeDir) mkdirSync(opts.storeDir, { recursive: true });
  const storeDir = opts.storeDir ?? mkdtempSync(join(tmpdir(), 'blip2-nats-'));
  const args = ['-js', '-sd', storeDir, '-a', '127.0.0.1', '-p', String(port)];
  const users = opts.users ?? (opts.auth ? [opts.auth] : undefined);
  if (users) {
    const conf = join(storeDir, 'auth.conf');
    writeFileSync(conf, natsAuthConf(users), { mode: 0o600 });
    chmodSync(conf, 0o600); // an existing file keeps its mode on write
    args.unshift('-c', conf);
  }
  if (opts.logFile) args.push('-l', opts.logFile);
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
      // A server killed by a signal has no exit code, only a signal code: waiting for its exit again would hang (and
      // with nothing else pending Node ends the process with status 13).
      if (child.exitCode === null && child.signalCode === null) {
        const done = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([done, new Promise((r) => setTimeout(r, 5000).unref())]);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
      if (!keepStore) rmSync(storeDir, { recursive: true, force: true });
    },
  };
}
