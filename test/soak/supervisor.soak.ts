/**
 * Soak (`npm run test:soak`, not part of `npm test`): one `blip2 launch` job on the synthetic data, 3 trainer
 * stand-ins (test/fixtures/standin-trainer.ts: the membership protocol, the shard queue and checksummed checkpoints
 * for real, the model replaced by a sleep), through 13 faults, one every SOAK_EVERY (default 6) steps: a random
 * trainer SIGKILLed 10 times, the coordinator twice (after the 3rd and the 7th trainer), the nats-server once
 * (after the 5th). The job must finish (exit 0) with every sample once per epoch in its final checkpoint, and
 * `launch` must have restarted every process it lost. Prints the figures (wall time, restarts, generations).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { repoRoot, waitUntil } from '../helpers/procs';

const EVERY = Number(process.env.SOAK_EVERY ?? '6');
const EPOCHS = 8;
const DEMO_SAMPLES = 86; // the demo's synthetic data: training samples per epoch

test('13 faults in one job (10 trainer kills, 2 coordinator kills, 1 nats-server kill): it finishes, every sample once per epoch', async () => {
  const runDir = mkdtempSync(join(tmpdir(), 'blip2-soak-'));
  const t0 = Date.now();
  const child = spawn(
    process.execPath,
    [join(repoRoot, 'bin/blip2.js'), 'launch', '--trainer-entry', 'test/fixtures/standin-trainer.ts', '--job.runDir', runDir,
      '--world.trainers', '3', '--train.epochs', String(EPOCHS), '--launch.restarts', '20', '--launch.backoffMs', '200',
      '--membership.heartbeatMs', '100', '--membership.timeoutMs', '1500', '--world.rendezvousSettleMs', '300',
      // The built-in demo's stage-1 phase only: 96 images, 4 per trainer, a commit every 5 steps.
      '--phases', 'stage1', '--data.synthSamples', '96', '--train.batchSizePerTrainer', '4', '--checkpoint.intervalSteps', '5'],
    { cwd: repoRoot, env: { ...process.env, STANDIN_STEP_MS: '100' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  let done = false;
  void exited.then(() => (done = true));
  const pidOf = (name: string) =>
    (JSON.parse(readFileSync(join(runDir, 'launch.lock'), 'utf8')) as { processes: { name: string; pid: number }[] }).processes.find((p) => p.name === name)?.pid;
  // The highest step shown so far (steps trained again after a restore do not count twice).
  const lastStep = () => Math.max(0, ...[...out.matchAll(/ step (\d+) /g)].map((m) => Number(m[1])));

  const plan: string[] = [];
  for (let k = 1; k <= 10; k++) {
    plan.push('trainer');
    if (k === 3 || k === 7) plan.push('coordinator');
    if (k === 5) plan.push('nats-server');
  }
  const faults: string[] = [];
  try {
    for (const what of plan) {
      const at = lastStep() + EVERY;
      await waitUntil(`${EVERY} more steps (fault ${faults.length + 1})`, () => done || lastStep() >= at, 180_000, 50);
      if (done) break;
      const name = what === 'trainer' ? `trainer-${Math.floor(Math.random() * 3)}` : what;
      const pid = pidOf(name);
      if (!pid) throw new Error(`no pid for ${name} in launch.lock`);
      // The next fault only once this one has been restarted.
      const restarted = what === 'nats-server' ? /nats-server restarted at/g : new RegExp(`${name} was killed by SIGKILL; restarting it`, 'g');
      const seen = [...out.matchAll(restarted)].length;
      process.kill(pid, 'SIGKILL');
      faults.push(`${name}@${lastStep()}`);
      await waitUntil(`${name} restarted`, () => [...out.matchAll(restarted)].length > seen && pidOf(name) !== pid, 60_000, 50);
    }
    expect(faults, `faults done before the job ended:\n${out.slice(-3000)}`).toHaveLength(plan.length);
    expect(await exited, out.slice(-5000)).toBe(0);
  } finally {
    if (child.exitCode === null) child.kill('SIGTERM');
  }
  const summary = JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8')) as { status: string; checkpointDir: string; generations: number; step: number };
  expect(summary.status).toBe('finished');
  const ledger = JSON.parse(readFileSync(join(summary.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
  for (let e = 0; e < EPOCHS; e++) {
    const ids = ledger[e] ?? [];
    expect(new Set(ids).size, `epoch ${e}: duplicates`).toBe(ids.length);
    expect(ids.length, `epoch ${e}: samples`).toBe(DEMO_SAMPLES);
  }
  const restarts = [...out.matchAll(/restarting it/g)].length;
  process.stdout.write(
    `soak: ${faults.length} faults (${faults.join(', ')}), ${restarts} restarts, ${summary.generations} generations, ` +
      `${summary.step} steps, ${EPOCHS} epochs x ${DEMO_SAMPLES} samples each once, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`,
  );
});
