/**
 * Who may join a ring: the job token (constant-time check, UNAUTHENTICATED otherwise), the job id, the
 * generation (older callers refused), and mutual TLS with certificates generated here by openssl.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { CollectiveError, createCollectiveGroup, LINK_METHOD_PATH, metadataKeys, type CollectiveGroup } from '../trainer/collective';
import * as data from './fixtures/collective-data';
import { startWorld, type World } from './fixtures/collective-world';

const pass = (b: Buffer) => b;

/** Opens a Link stream with the given metadata and resolves with the status the server ends it with. */
function rawCall(port: number, md: Record<string, string>, creds = grpc.credentials.createInsecure()): Promise<{ code: number; details: string; frames: number }> {
  const client = new grpc.Client(`127.0.0.1:${port}`, creds);
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) metadata.set(k, v);
  const call = client.makeBidiStreamRequest(LINK_METHOD_PATH, pass, pass, metadata);
  let frames = 0;
  return new Promise((resolve) => {
    call.on('data', () => frames++);
    call.on('error', (e: grpc.ServiceError) => {
      client.close();
      resolve({ code: e.code, details: e.details, frames });
    });
    call.on('status', (s: grpc.StatusObject) => {
      if (s.code === grpc.status.OK) {
        client.close();
        resolve({ code: s.code, details: s.details, frames });
      }
    });
  });
}

describe('collective authentication and generations', () => {
  const groups: CollectiveGroup[] = [];
  afterAll(async () => {
    await Promise.all(groups.map((g) => g.close()));
  });

  it('refuses a wrong token, another job and an old generation; the ring keeps working', async () => {
    const base = { jobId: 'job-sec', token: 'right-token', listen: { host: '127.0.0.1', port: 0 }, timeoutMs: 5000 };
    const a = await createCollectiveGroup(base);
    const b = await createCollectiveGroup(base);
    groups.push(a, b);
    const peers = [
      { rank: 0, host: '127.0.0.1', port: a.address.port },
      { rank: 1, host: '127.0.0.1', port: b.address.port },
    ];
    await Promise.all([
      a.connect({ generation: 2, rank: 0, worldSize: 2, peers }),
      b.connect({ generation: 2, rank: 1, worldSize: 2, peers }),
    ]);
    const good = { [metadataKeys.authorization]: 'Bearer right-token', [metadataKeys.jobId]: 'job-sec', [metadataKeys.generation]: '2', [metadataKeys.rank]: '1' };

    // Wrong or missing token: UNAUTHENTICATED, and the reply says nothing else.
    for (const auth of ['Bearer wrong-token', 'Bearer right-toke', 'right-token', '']) {
      const r = await rawCall(a.address.port, { ...good, [metadataKeys.authorization]: auth });
      expect(r).toEqual({ code: grpc.status.UNAUTHENTICATED, details: 'unauthenticated', frames: 0 });
    }
    // Another job.
    const job = await rawCall(a.address.port, { ...good, [metadataKeys.jobId]: 'other-job' });
    expect(job.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(job.frames).toBe(0);
    // An old generation.
    const stale = await rawCall(a.address.port, { ...good, [metadataKeys.generation]: '1' });
    expect(stale.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(stale.details).toContain('stale generation 1');
    expect(stale.frames).toBe(0);
    // A group still on generation 1 that tries to join is refused with a CollectiveError naming the peer.
    const old = await createCollectiveGroup(base);
    groups.push(old);
    const err = await old.connect({ generation: 1, rank: 1, worldSize: 2, peers }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CollectiveError);
    expect((err as CollectiveError).failure).toBe('refused');
    expect((err as CollectiveError).missingRank).toBe(0);
    expect((err as CollectiveError).message).toContain('stale generation 1');
    // A second successor for the same generation is refused too (the slot is taken).
    const dup = await rawCall(a.address.port, good);
    expect(dup.code).toBe(grpc.status.ALREADY_EXISTS);
    // A caller that opens another number of streams per link than this rank.
    const streams = await rawCall(a.address.port, { ...good, [metadataKeys.stream]: '0/2' });
    expect(streams.code).toBe(grpc.status.FAILED_PRECONDITION);

    // The refused callers did not disturb the ring.
    const x = new Float32Array([1, 2, 3]);
    const y = new Float32Array([10, 20, 30]);
    await Promise.all([a.allReduce([x]), b.allReduce([y])]);
    expect(Array.from(x)).toEqual([11, 22, 33]);
    expect(Array.from(y)).toEqual([11, 22, 33]);
    expect(a.stats().allReduce).toMatchObject({ calls: 1, bytes: 12 });
    expect(a.stats().allReduce.seconds).toBeGreaterThan(0);
  });
});

describe('collectives over mutual TLS', () => {
  const dir = mkdtempSync(join(tmpdir(), 'collective-tls-'));
  let world: World | undefined;
  afterAll(() => {
    world?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A CA and a certificate for 127.0.0.1/localhost usable as server and client, in `folder`. */
  function makeCerts(folder: string, caName: string): void {
    const run = (...args: string[]) => execFileSync('openssl', args, { cwd: folder, stdio: 'pipe' });
    run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', `/CN=${caName}`);
    run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'node.key', '-out', 'node.csr', '-subj', '/CN=localhost');
    writeFileSync(join(folder, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
    run('x509', '-req', '-in', 'node.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'node.pem', '-days', '1', '-extfile', 'ext.cnf');
  }

  it('three ranks all-reduce and all-gather over mTLS; plaintext and foreign-CA callers are refused', async () => {
    const certs = join(dir, 'certs');
    const foreign = join(dir, 'foreign');
    execFileSync('mkdir', ['-p', certs, foreign, join(dir, 'out')]);
    makeCerts(certs, 'blip2-test-ca');
    makeCerts(foreign, 'someone-else-ca');
    const out = join(dir, 'out');
    const n = 3;
    world = await startWorld(n, { scenario: 'tls', dir: out, jobId: 'job-tls', token: 'tok', timeoutMs: 10_000, tlsDir: certs });
    const port = world.procs[0]!.port;
    const md = { [metadataKeys.authorization]: 'Bearer tok', [metadataKeys.jobId]: 'job-tls', [metadataKeys.generation]: '1', [metadataKeys.rank]: '1' };
    // Plaintext caller: no TLS handshake, no stream.
    const plain = await rawCall(port, md);
    expect(plain.code).toBe(grpc.status.UNAVAILABLE);
    expect(plain.frames).toBe(0);
    // A caller whose certificate another CA signed (it trusts ours, but we do not trust it).
    const f = (name: string) => readFileSync(join(foreign, name));
    const foreignCreds = grpc.credentials.createSsl(readFileSync(join(certs, 'ca.pem')), f('node.key'), f('node.pem'));
    const refused = await rawCall(port, md, foreignCreds);
    expect(refused.code).toBe(grpc.status.UNAVAILABLE);
    expect(refused.frames).toBe(0);

    world.join(1);
    await world.waitAll('done', 60_000);
    const load = (name: string, rank: number) => {
      const b = readFileSync(join(out, `${name}.r${rank}.bin`));
      return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
    };
    const want = new Float64Array(50_001);
    for (let r = 0; r < n; r++) data.intData(r, 50_001, 9).forEach((v, i) => (want[i]! += v));
    for (let r = 0; r < n; r++) {
      expect(Array.from(load('gen1', r))).toEqual(Array.from(want));
      for (let from = 0; from < n; from++) expect(load(`gen1.gather.from${from}`, r)).toEqual(data.gatherBlock(from, data.gatherWidth));
    }
  });
});
