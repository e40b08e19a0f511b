// Two trainer processes pull an epoch of shard descriptors from JetStream; one is killed with SIGKILL while it holds
// a partly read, unacked shard. Its shard is redelivered after ack_wait and resumed from the committed cursor; the
// epoch completes and the ledger shows every sample exactly once.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, expect, inject, test } from 'vitest';
import { loadIndex, planEpoch, SampleLedger, ShardPublisher, writeSynthDataset } from '../dataloader';

const tempDirs: string[] = [];
const tempDir = (prefix: string) => { const d = mkdtempSync(join(tmpdir(), prefix)); tempDirs.push(d); return d; };
afterAll(() => { for (const d of tempDirs) rmSync(d, { recursive: true, force: true }); });


const children: ChildProcess[] = [];
let nc: NatsConnection | undefined;
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await nc?.close();
});

interface Trainer { proc: ChildProcess; lines: string[]; waitFor(re: RegExp, timeoutMs: number): Promise<string>; exited: Promise<number | null> }

function startTrainer(config: object): Trainer {
  const proc = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'fixtures', 'data-trainer.ts'), JSON.stringify(config)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  const lines: string[] = [];
  const waiters: Array<{ re: RegExp; resolve: (l: string) => void }> = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => {
    lines.push(l);
    for (const w of [...waiters]) if (w.re.test(l)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(l); }
  });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => {
    if (code !== 0 && code !== null) process.stderr.write(`trainer ${proc.pid} exited ${code}:\n${stderr}\n`);
    resolve(code);
  }));
  return {
    proc, lines, exited,
    waitFor: (re, timeoutMs) => {
      const hit = lines.find((l) => re.test(l));
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        waiters.push({ re, resolve });
        setTimeout(() => reject(new Error(`trainer ${proc.pid}: no line matching ${re} in ${timeoutMs} ms; got:\n${lines.join('\n')}\n${stderr}`)), timeoutMs).unref();
      });
    },
  };
}

test('SIGKILL of a trainer holding unacked work: the epoch completes, every sample exactly once', async () => {
  const root = tempDir('blip2-sigkill-');
  await writeSynthDataset({ out: root, samples: 80, shardSize: 10, imageSize: 32, seed: 11 });
  const index = loadIndex(join(root, 'index.json'));
  const expected = index.datasets[0]!.shards.flatMap((s, i) => Array.from({ length: s.samples }, (_, k) => `train/${s.path}/${String(i * 10 + k).padStart(9, '0')}`));
  const plan = planEpoch({ index, epoch: 0, seed: 11 });
  expect(plan).toHaveLength(8); // 72 training samples in shards of 10 (the last has 2)

  nc = await connect({ servers: inject('natsUrl') });
  const name = `SIGKILL_${process.pid}_${Date.now()}`;
  const q = { stream: name, subject: `test.${name}.shards`, durable: 'trainers', ackWaitMs: 1500, maxDeliver: 5 };
  const pub = new ShardPublisher({ nc, ...q });
  await pub.ensureStream();
  await pub.publishEpoch(plan);

  const commitFile = join(root, 'commits.jsonl');
  const base = { natsUrl: inject('natsUrl'), ...q, dataRoot: root, commitFile, batchSize: 4, imageSize: 32 };
  // The victim is slow, so it still holds a partly read shard after its first checkpoint.
  const victim = startTrainer({ ...base, slowMs: 400 });
  await victim.waitFor(/^COMMIT 1 /, 60_000);
  const survivor = startTrainer({ ...base, slowMs: 0 });
  victim.proc.kill('SIGKILL');
  await victim.exited;
  const heldByVictim = victim.lines.filter((l) => l.startsWith('LEASED')).map((l) => l.split(' ')[1]!);
  expect(heldByVictim.length).toBeGreaterThan(0);

  expect(await survivor.exited).toBe(0);
  expect(survivor.lines.at(-1)).toBe('DONE');
  // The victim's unacked shard came back to the survivor, resumed at the committed cursor.
  const redelivered = survivor.lines.filter((l) => /^LEASED .* delivery=[2-9]/.test(l));
  expect(redelivered.length).toBeGreaterThan(0);
  // The victim's first shard (10 samples, batches of 4) was partly committed when it died: the survivor got it
  // again and resumed past its start, at the committed cursor.
  const first = redelivered.find((l) => l.split(' ')[1] === heldByVictim[0]);
  expect(first, survivor.lines.join('\n')).toBeDefined();
  expect(Number(/cursor=(\d+)/.exec(first!)![1])).toBeGreaterThanOrEqual(4);

  expect(existsSync(commitFile)).toBe(true);
  const ledger = new SampleLedger();
  const byPid = new Map<number, number>();
  for (const line of readFileSync(commitFile, 'utf8').trim().split('\n')) {
    const c = JSON.parse(line) as { pid: number; newSamples: Record<string, string[]> };
    for (const [epoch, ids] of Object.entries(c.newSamples)) {
      ledger.record(Number(epoch), ids);
      byPid.set(c.pid, (byPid.get(c.pid) ?? 0) + ids.length);
    }
  }
  expect(byPid.get(victim.proc.pid!)).toBeGreaterThan(0); // the victim committed work before it died
  expect(byPid.get(survivor.proc.pid!)).toBeGreaterThan(0);
  expect(ledger.check(0, expected)).toEqual({ ok: true, missing: [], duplicates: [], unexpected: [] });
  expect(await pub.progress()).toEqual({ pending: 0, inFlight: 0, remaining: 0, exhausted: 0 });
  await pub.deleteStream();
}, 120_000);
