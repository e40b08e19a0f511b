/**
 * A rank process SIGKILLed in the middle of 64 MB all-reduces: every survivor fails with a CollectiveError that
 * names the lost rank and the operation, within the timeout, and exits (no hang).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startWorld, type World } from './fixtures/collective-world';

describe('a rank killed or stopped during a 64 MB all-reduce', () => {
  let world: World | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'collective-fault-'));
  afterAll(() => {
    world?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it.each([
    [3, 1],
    [4, 2],
  ])('world of %i, rank %i killed: survivors name it within the timeout', async (n, victim) => {
    const timeoutMs = 5000;
    world = await startWorld(n, { scenario: 'fault', dir, jobId: 'job-fault', token: 't', timeoutMs });
    world.join(1);
    // Every rank has finished one 64 MiB all-reduce and started the next one.
    await Promise.all(world.procs.map((p) => p.waitFor((e) => e.event === 'op-start' && (e.i as number) >= 1, 60_000)));
    await new Promise((r) => setTimeout(r, 30));
    const killedAt = Date.now();
    world.procs[victim]!.child.kill('SIGKILL');
    const survivors = world.procs.filter((p) => p.index !== victim);
    const errors = await Promise.all(survivors.map((p) => p.waitFor((e) => e.event === 'error', timeoutMs + 5000)));
    for (const e of errors) {
      expect(e.name, JSON.stringify(e)).toBe('CollectiveError');
      expect(e.missingRank, JSON.stringify(e)).toBe(victim);
      expect(e.op as string).toMatch(/^allReduce#\d+$/);
      expect(e.message as string).toContain(`rank ${victim}`);
      expect(['peer-lost', 'aborted', 'timeout']).toContain(e.failure);
      expect(e.sinceOpStartMs as number).toBeLessThan(timeoutMs + 1000);
      expect(Date.now() - killedAt).toBeLessThan(timeoutMs);
    }
    // They exit rather than hang (each lingers 1 s after its error, as a trainer going back to rendezvous would).
    await Promise.all(
      survivors.map(
        (p) =>
          new Promise<void>((resolve, reject) => {
            const t = setTimeout(() => reject(new Error(`rank process ${p.index} did not exit`)), 10_000);
            const check = () => (p.exitCode !== null ? (clearTimeout(t), resolve()) : setTimeout(check, 20));
            check();
          }),
      ),
    );
    for (const p of survivors) {
      expect(p.exitCode).toBe(3);
      expect(p.exitedAtMs - killedAt).toBeLessThan(timeoutMs + 3000);
    }
    world.kill();
  });

  it('world of 2, rank 1 stopped (SIGSTOP): rank 0 times out naming it', async () => {
    const timeoutMs = 2000;
    world = await startWorld(2, { scenario: 'fault', dir, jobId: 'job-stop', token: 't', timeoutMs });
    world.join(1);
    await Promise.all(world.procs.map((p) => p.waitFor((e) => e.event === 'op-start' && (e.i as number) >= 1, 60_000)));
    const stoppedAt = Date.now();
    world.procs[1]!.child.kill('SIGSTOP');
    const e = await world.procs[0]!.waitFor((x) => x.event === 'error', timeoutMs + 5000);
    const elapsed = Date.now() - stoppedAt;
    expect(e.name, JSON.stringify(e)).toBe('CollectiveError');
    expect(e.failure, JSON.stringify(e)).toBe('timeout');
    expect(e.missingRank).toBe(1);
    expect(e.op as string).toMatch(/^allReduce#\d+$/);
    expect(elapsed).toBeGreaterThanOrEqual(timeoutMs * 0.9);
    expect(elapsed).toBeLessThan(timeoutMs + 2000);
    world.kill();
  });
});
