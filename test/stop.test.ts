/**
 * `blip2 stop` on a real job (`blip2 launch` with its nats-server, the coordinator and two real trainers on the
 * tiny preset): a wrong token is refused (exit 2); the right one (the token launch left in <runDir>/job.token)
 * ends the job at its next commit, which is the final checkpoint on disk; every process exits, launch exits 0
 * saying the job was stopped.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { repoRoot, waitUntil } from './helpers/procs';

function blip2(args: string[]) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BLIP2_')));
  const child = spawn(process.execPath, [join(repoRoot, 'bin/blip2.js'), ...args], { cwd: repoRoot, env: { ...env, BLIP2_ENGINE: 'cpu' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

test('blip2 stop ends a running job at its next commit; launch exits 0 and says so', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'blip2-stop-'));
  const runDir = join(dir, 'run');
  const configFile = join(dir, 'job.yaml');
  writeFileSync(configFile, [
    'job: { id: stop-test, runDir: run }',
    'model: { preset: tiny }',
    'data: { synthSamples: 64, synthImageSize: 16, samplesPerShard: 8, ackWaitMs: 30000 }',
    'train: { epochs: 50, batchSizePerTrainer: 4 }',
    'optim: { warmupSteps: 1 }',
    'checkpoint: { intervalSteps: 3 }',
    'world: { trainers: 2, min: 1, rendezvousSettleMs: 3000 }',
    'membership: { heartbeatMs: 200, timeoutMs: 10000 }',
    '',
  ].join('\n'));
  const launch = blip2(['launch', '--config', configFile]);
  try {
    await waitUntil('a step of progress', () => /epoch 1\/50 {2}step \d+/.test(launch.output()), 240_000, 500);
    expect(statSync(join(runDir, 'job.token')).mode & 0o777).toBe(0o600);

    // The job's NATS URL and user come from <runDir>/nats.json, which launch wrote (its nats-server requires them).
    const intruder = blip2(['stop', '--config', configFile, '--job.token', 'not-the-token']);
    expect(await intruder.exited, intruder.output()).toBe(2);
    expect(intruder.output()).toMatch(/^blip2: job stop-test refused stop .*the job token does not match/m);

    const stop = blip2(['stop', '--config', configFile]);
    expect(await stop.exited, stop.output()).toBe(0);
    expect(stop.output()).toContain('job stop-test: stop requested; it ends at its next committed checkpoint');
    const m = /job stop-test stopped: stopped by blip2 stop \(.+\) at the commit of step (\d+); final checkpoint (\S+)/.exec(stop.output());
    expect(m, stop.output()).not.toBeNull();
    const [, step, checkpointDir] = m!;
    expect(existsSync(join(checkpointDir!, 'checkpoint.json'))).toBe(true);
    expect(JSON.parse(readFileSync(join(checkpointDir!, 'checkpoint.json'), 'utf8')).step).toBe(Number(step));

    expect(await launch.exited, launch.output()).toBe(0);
    expect(launch.output()).toMatch(new RegExp(`job stopped by blip2 stop \\(.+\\) at the commit of step ${step}`));
    expect(launch.output()).toMatch(/job stop-test stopped after/);
    expect(launch.output()).toContain(`checkpoint:        ${checkpointDir}`);
    expect(launch.output()).not.toContain('job failed');
    expect(JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8'))).toMatchObject({ status: 'stopped', step: Number(step), checkpointDir });
    // The trainers saw the end and exited by themselves (0), not through the launcher's SIGTERM (143).
    for (const t of ['trainer-0', 'trainer-1']) expect(readFileSync(join(runDir, 'logs', `${t}.log`), 'utf8')).not.toMatch(/"?stopping"?.*signal/);
  } finally {
    if (launch.child.exitCode === null) launch.child.kill('SIGTERM');
  }
});
