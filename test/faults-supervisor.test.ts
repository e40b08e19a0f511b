/**
 * `blip2 launch` as a supervisor, with real processes, a real nats-server and real kills: a trainer, the coordinator
 * and the nats-server SIGKILLed mid-job are restarted and the job finishes with every sample once per epoch; killing
 * the launcher (SIGTERM, SIGKILL) leaves no process behind (SIGKILL: the next launch stops the nats-server it left,
 * via launch.lock, and says so); a second launch of a live run dir is refused; `blip2 join` adds a trainer that the
 * launcher did not start, and the launcher follows the job on it when its own trainers are gone; each role's NATS
 * user can do only its part (a trainer's cannot write the job state); a corrupt committed checkpoint, at a relaunch or
 * found by the trainers while the job runs, sends the job back to the previous valid one. Trainers are the stand-in
 * (test/fixtures/standin-trainer.ts): the protocol and the shard queue for real, the model replaced by a sleep.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { afterEach, describe, expect, test } from 'vitest';
import { jobSubjects } from '../common';
import { FAST_STEP_MS, repoRoot, standinPace, waitUntil } from './helpers/procs';

interface Launched {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
  /** The stand-in trainers' step time from their next step on (their STANDIN_STEP_MS_FILE), restarted ones too. */
  pace(stepMs: number): void;
  /** That file, for a trainer started by hand (`blip2 join`). */
  stepMsFile: string;
}
const launched: Launched[] = [];
const extraPids: number[] = [];

afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') for (const l of launched) process.stderr.write(`--- launch\n${l.output().slice(-5000)}\n`);
  for (const l of launched.splice(0)) if (l.child.exitCode === null) l.child.kill('SIGKILL');
  for (const pid of extraPids.splice(0)) if (alive(pid)) process.kill(pid, 'SIGKILL');
});

const FAST = [
  '--membership.heartbeatMs', '100', '--membership.timeoutMs', '1500', '--world.rendezvousSettleMs', '300', '--launch.backoffMs', '200',
  // The built-in demo's stage-1 phase only, in the shape these tests were written for: 96 images, 4 per trainer, a
  // commit every 5 steps.
  '--phases', 'stage1', '--data.synthSamples', '96', '--train.batchSizePerTrainer', '4', '--checkpoint.intervalSteps', '5',
];

// The stand-ins' step time can change while the job runs (standinPace): slow while a test injects its faults, fast
// once they are done, so that the rest of the job (still checked: every sample once per epoch) takes little time.
function launch(runDir: string, extra: string[], stepMs = 300): Launched {
  const { env, pace } = standinPace(stepMs);
  const child = spawn(
    process.execPath,
    [join(repoRoot, 'bin/blip2.js'), 'launch', '--trainer-entry', 'test/fixtures/standin-trainer.ts', '--job.runDir', runDir, ...FAST, ...extra],
    { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const l = { child, output: () => out, exited, pace, stepMsFile: env.STANDIN_STEP_MS_FILE };
  launched.push(l);
  return l;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface Lock { launcher: number; processes: { name: string; pid: number }[] }
const readLock = (runDir: string): Lock | null => {
  try {
    return JSON.parse(readFileSync(join(runDir, 'launch.lock'), 'utf8')) as Lock;
  } catch {
    return null;
  }
};
const pidOf = (runDir: string, name: string) => readLock(runDir)?.processes.find((p) => p.name === name)?.pid;

/** The final checkpoint's ledger.json: every epoch's samples once, `perEpoch` of them. */
function expectLedgerOnce(runDir: string, epochs: number, perEpoch: number): void {
  const summary = JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8')) as { status: string; checkpointDir: string };
  expect(summary.status).toBe('finished');
  const ledger = JSON.parse(readFileSync(join(summary.checkpointDir, 'ledger.json'), 'utf8')) as Record<string, string[]>;
  for (let e = 0; e < epochs; e++) {
    const ids = ledger[e] ?? [];
    expect(new Set(ids).size, `epoch ${e}: duplicates`).toBe(ids.length);
    expect(ids.length, `epoch ${e}: samples`).toBe(perEpoch);
  }
}

// The demo's synthetic data: 86 training samples an epoch.
const DEMO_SAMPLES = 86;

describe('launch supervises its processes', () => {
  test('a trainer, the coordinator and the nats-server SIGKILLed mid-job are restarted; the job finishes, every sample once per epoch', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-supervise-'));
    const l = launch(runDir, ['--train.epochs', '3']);
    const step = (n: number) => waitUntil(`step ${n}`, () => [...l.output().matchAll(/step (\d+)/g)].some((m) => Number(m[1]) >= n), 120_000);
    await step(4);
    // The trainer doing the work (the stand-in's rank 0): the first of the world.
    const rank0 = /generation \d+: world of \d+ \[(trainer-\d)/.exec(l.output())![1]!;
    const victim = pidOf(runDir, rank0)!;
    process.kill(victim, 'SIGKILL');
    await waitUntil('the trainer restarted', () => new RegExp(`${rank0} was killed by SIGKILL; restarting it`).test(l.output()) && pidOf(runDir, rank0) !== victim, 30_000);
    await step(12);
    const coordinator = pidOf(runDir, 'coordinator')!;
    process.kill(coordinator, 'SIGKILL');
    await waitUntil('the coordinator restarted', () => /coordinator was killed by SIGKILL; restarting it/.test(l.output()) && pidOf(runDir, 'coordinator') !== coordinator, 30_000);
    await step(20);
    const nats = pidOf(runDir, 'nats-server')!;
    process.kill(nats, 'SIGKILL');
    await waitUntil('the nats-server restarted', () => /nats-server restarted at/.test(l.output()), 30_000);
    l.pace(FAST_STEP_MS); // the faults are done: the rest of the job quickly
    expect(await l.exited, l.output()).toBe(0);
    const out = l.output();
    expect(out).toMatch(/job blip2-demo finished after/);
    expect(out).toMatch(/nats-server was killed by SIGKILL; restarting it on port \d+ with the same store/);
    expectLedgerOnce(runDir, 3, DEMO_SAMPLES);
    expect(existsSync(join(runDir, 'launch.lock'))).toBe(false);
    for (const pid of [victim, coordinator, nats]) expect(alive(pid)).toBe(false);
  });

  test('launch.restarts counts restarts in a row: a process up for launch.restartsResetMs before it dies starts its count again (with 0, it does not)', async () => {
    const killAfterUp = async (l: Launched, runDir: string, upMs: number) => {
      const pid = await waitUntil('trainer-0 running', () => pidOf(runDir, 'trainer-0'), 30_000);
      await new Promise((r) => setTimeout(r, upMs)); // how long it is up before it dies: the rule under test
      process.kill(pid, 'SIGKILL');
      return pid;
    };
    const restartsOf = (out: string) => [...out.matchAll(/trainer-0 was killed by SIGKILL; restarting it in 0\.2 s \(restart 1 of 1\)/g)].length;
    // Reset after 0.6 s up: three kills after 1.2 s up each (twice the reset time), every one restarted although
    // launch.restarts is 1.
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-supervise-reset-'));
    const l = launch(runDir, ['--train.epochs', '4', '--launch.restarts', '1', '--launch.restartsResetMs', '600'], 300);
    for (let k = 1; k <= 3; k++) {
      const pid = await killAfterUp(l, runDir, 1200);
      await waitUntil(`restart ${k}`, () => restartsOf(l.output()) >= k && pidOf(runDir, 'trainer-0') !== pid, 30_000);
    }
    l.pace(FAST_STEP_MS); // the kills are done: the rest of the job quickly
    expect(await l.exited, l.output()).toBe(0);
    expect(l.output()).not.toMatch(/not restarted/);
    expectLedgerOnce(runDir, 4, DEMO_SAMPLES);
    // No reset (0): the second kill is one too many, after the same 1.2 s up that reset the count above.
    const runDir2 = mkdtempSync(join(tmpdir(), 'blip2-supervise-noreset-'));
    const l2 = launch(runDir2, ['--train.epochs', '4', '--launch.restarts', '1', '--launch.restartsResetMs', '0'], 300);
    const first = await killAfterUp(l2, runDir2, 1200);
    await waitUntil('the restart', () => restartsOf(l2.output()) === 1 && pidOf(runDir2, 'trainer-0') !== first, 30_000);
    await killAfterUp(l2, runDir2, 1200);
    await waitUntil('no second restart', () => /trainer-0 was killed by SIGKILL \(not restarted: launch\.restarts is 1\)/.test(l2.output()), 30_000);
    l2.child.kill('SIGTERM');
    expect(await l2.exited, l2.output()).toBe(0);
  });

  test('a trainer that keeps dying is restarted launch.restarts times, then the job fails with its last lines', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-supervise-fail-'));
    const child = spawn(
      process.execPath,
      [join(repoRoot, 'bin/blip2.js'), 'launch', '--trainer-entry', 'test/fixtures/failing-trainer.ts', '--job.runDir', runDir, ...FAST,
        '--world.trainers', '1', '--launch.restarts', '2'],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    launched.push({ child, output: () => out, exited: new Promise((r) => child.once('exit', r)), pace: () => undefined, stepMsFile: '' });
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    expect(code, out).toBe(1);
    expect(out).toMatch(/trainer-0 exited with code 1; restarting it in 0\.2 s \(restart 1 of 2\)/);
    expect(out).toMatch(/trainer-0 exited with code 1; restarting it in 0\.4 s \(restart 2 of 2\)/);
    expect(out).toMatch(/trainer-0 exited with code 1 \(not restarted: launch\.restarts is 2\); its last lines [^\n]*\n[\s\S]*simulated failure/);
    expect(out).toMatch(/job failed: every trainer exited before the job finished/);
    expect(existsSync(join(runDir, 'launch.lock'))).toBe(false);
  });
});

test('a nats-server that dies with launch.restarts 0: launch fails (within seconds), says why, and leaves nothing running', async () => {
  const runDir = mkdtempSync(join(tmpdir(), 'blip2-nats-gone-'));
  const l = launch(runDir, ['--launch.restarts', '0', '--train.epochs', '5']);
  await waitUntil('a step', () => /step \d+/.test(l.output()), 120_000);
  const pids = readLock(runDir)!.processes.map((p) => p.pid);
  process.kill(pidOf(runDir, 'nats-server')!, 'SIGKILL');
  expect(await l.exited, l.output()).toBe(1);
  expect(l.output()).toMatch(/job failed: the job's nats-server was killed by SIGKILL and was not restarted \(launch\.restarts is 0\)/);
  for (const pid of pids) expect(alive(pid), `pid ${pid}`).toBe(false);
});

describe('no orphans', () => {
  // SIGTERM to the launcher: the first launch of 'checkpoints on a relaunch' below (one job for both).

  test('SIGKILL to the launcher: its trainers and coordinator stop by themselves, the next launch stops the nats-server it left and continues the job; a live launch is not launched twice', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-orphans-kill-'));
    const first = launch(runDir, ['--train.epochs', '3']);
    await waitUntil('a step', () => /step \d+/.test(first.output()), 120_000);
    // A second launch of the same run dir while the first runs: refused, nothing started.
    const second = launch(runDir, ['--train.epochs', '3']);
    expect(await second.exited, second.output()).toBe(2);
    expect(second.output()).toMatch(new RegExp(`is in use by another blip2 launch \\(pid ${first.child.pid}`));
    expect(second.output()).not.toMatch(/nats-server started/);

    const lock = readLock(runDir)!;
    const nats = lock.processes.find((p) => p.name === 'nats-server')!.pid;
    extraPids.push(...lock.processes.map((p) => p.pid));
    first.child.kill('SIGKILL');
    await first.exited;
    const jobProcs = lock.processes.filter((p) => p.name !== 'nats-server').map((p) => p.pid);
    await waitUntil('the trainers and the coordinator stop by themselves', () => jobProcs.every((pid) => !alive(pid)), 30_000);
    expect(alive(nats)).toBe(true); // a nats-server cannot watch its parent: the next launch stops it

    const third = launch(runDir, ['--train.epochs', '3'], FAST_STEP_MS);
    expect(await third.exited, third.output()).toBe(0);
    const out = third.output();
    expect(out).toMatch(new RegExp(`a previous launch of this run dir \\(pid ${first.child.pid}\\) ended without stopping its processes: stopping nats-server \\(pid ${nats}\\)`));
    expect(out).toMatch(/continuing job blip2-demo/);
    expect(alive(nats)).toBe(false);
    expectLedgerOnce(runDir, 3, DEMO_SAMPLES);
  });
});

describe('blip2 join and per-role NATS users', () => {
  test('join adds a trainer with the saved credentials; the launcher follows the job on it when its own trainer is gone; a trainer\'s and the launcher\'s NATS users cannot write the job state', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-join-'));
    const l = launch(runDir, ['--world.trainers', '1', '--world.max', '2', '--launch.restarts', '0', '--train.epochs', '3']);
    await waitUntil('a step', () => /step \d+/.test(l.output()), 120_000);
    const natsFile = join(runDir, 'nats.json');
    expect(statSync(natsFile).mode & 0o777).toBe(0o600);
    const saved = JSON.parse(readFileSync(natsFile, 'utf8')) as { url: string; roles: Record<'coordinator' | 'trainer' | 'launcher', { user: string; password: string }> };
    expect(new Set(Object.values(saved.roles).map((r) => r.user)).size).toBe(3);

    // Each role's user on the job's KV bucket: everyone reads; only the coordinator writes.
    const { bucket, stateKey, shardStream } = jobSubjects('blip2-demo');
    const as = async (role: 'coordinator' | 'trainer' | 'launcher') => {
      const nc = await connect({ servers: saved.url, user: saved.roles[role].user, pass: saved.roles[role].password });
      return { nc, kv: await new Kvm(nc).open(bucket) };
    };
    for (const role of ['trainer', 'launcher'] as const) {
      const { nc, kv } = await as(role);
      const before = (await kv.get(stateKey))!;
      expect(before.revision).toBeGreaterThan(0);
      await expect(kv.put(stateKey, JSON.stringify({ status: 'finished' })), role).rejects.toThrow(/permissions violation/i);
      await expect(kv.delete(stateKey), role).rejects.toThrow(/permissions violation/i);
      // Nor may it purge the shard queue or delete the bucket.
      await expect(nc.request(`$JS.API.STREAM.PURGE.${shardStream}`, '{}', { timeout: 2000 }), role).rejects.toThrow(/permissions violation/i);
      await expect(nc.request(`$JS.API.STREAM.DELETE.KV_${bucket}`, '', { timeout: 2000 }), role).rejects.toThrow(/permissions violation/i);
      const after = (await kv.get(stateKey))!;
      expect(JSON.parse(after.string()).status, role).not.toBe('finished');
      await nc.close();
    }

    // One more trainer, started by hand with the run dir's credentials.
    const join_ = spawn(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'join', '--run-dir', runDir, '--node-id', 'extra', '--trainer-entry', 'test/fixtures/standin-trainer.ts'], {
      cwd: repoRoot, env: { ...process.env, STANDIN_STEP_MS: '300', STANDIN_STEP_MS_FILE: l.stepMsFile }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let joinOut = '';
    join_.stdout.on('data', (d: Buffer) => (joinOut += d.toString()));
    join_.stderr.on('data', (d: Buffer) => (joinOut += d.toString()));
    const joinExit = new Promise<number | null>((r) => join_.once('exit', (c) => r(c)));
    extraPids.push(join_.pid!);
    await waitUntil('the joined trainer in the world', () => /generation \d+: world of 2 \[[^\]]*extra/.test(l.output()), 60_000);
    // The launcher's only trainer dies and is not restarted (launch.restarts 0): the job goes on with `extra`.
    process.kill(pidOf(runDir, 'trainer-0')!, 'SIGKILL');
    await waitUntil('the launcher follows the job on the joined trainer', () => /every trainer this launch started has exited; following the job with 1 other member\(s\): extra/.test(l.output()), 30_000);
    l.pace(FAST_STEP_MS); // the joined trainer's too: the rest of the job quickly
    expect(await l.exited, l.output()).toBe(0);
    expect(await joinExit, joinOut).toBe(0);
    expect(l.output()).toMatch(/job blip2-demo finished after/);
    expect(joinOut).toMatch(/blip2 join: trainer extra for job blip2-demo/);
    expectLedgerOnce(runDir, 3, DEMO_SAMPLES);
  });

  test('join refuses a run dir without a running launch, with one line', () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-join-none-'));
    const r = spawnSync(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'join', '--run-dir', runDir], { cwd: repoRoot, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^blip2: .*nats\.json/);
    expect(readdirSync(runDir)).toEqual([]);
  });
});

describe('checkpoints on a relaunch', () => {
  test('SIGTERM to the launcher stops every process it started; a committed checkpoint that then fails its checksum: the job goes back to the previous valid one, says so, and finishes with every sample once; unfinished checkpoint directories are removed', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-corrupt-'));
    const first = launch(runDir, ['--train.epochs', '3'], 100);
    await waitUntil('a few commits', () => [...first.output().matchAll(/step (\d+)/g)].some((m) => Number(m[1]) >= 28), 120_000);
    // SIGTERM to the launcher stops every process it started.
    const pids = readLock(runDir)!.processes.map((p) => p.pid);
    expect(pids.length, 'SIGTERM: processes running before it (nats-server, coordinator, 2 trainers)').toBe(4);
    first.child.kill('SIGTERM');
    expect(await first.exited, `SIGTERM: the launcher's exit status\n${first.output()}`).toBe(0);
    expect(first.output(), 'SIGTERM: the launcher says so').toMatch(/SIGTERM: stopping now/);
    for (const pid of pids) expect(alive(pid), `SIGTERM: pid ${pid} stopped`).toBe(false);
    expect(existsSync(join(runDir, 'launch.lock')), 'SIGTERM: launch.lock removed').toBe(false);
    // Then the checkpoint it leaves, corrupted, at the next launch.
    const stopped = JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8')) as { status: string; checkpointDir: string; step: number };
    expect(stopped.status).toBe('stopped');
    // One flipped byte in the committed checkpoint's model.
    const model = join(stopped.checkpointDir, 'model.safetensors');
    const bytes = readFileSync(model);
    bytes[bytes.length - 1] ^= 0xff;
    writeFileSync(model, bytes);
    // What a writer killed mid-write leaves.
    const stale = join(runDir, 'checkpoints', '.step-00000099.tmp-4242-1');
    mkdirSync(stale);
    writeFileSync(join(stale, 'model.safetensors'), 'partial');

    const second = launch(runDir, ['--train.epochs', '3'], FAST_STEP_MS);
    expect(await second.exited, second.output()).toBe(0);
    const out = second.output();
    expect(out).toMatch(/removed 1 unfinished checkpoint directory a killed writer left: .*\.step-00000099\.tmp-4242-1/);
    expect(out).toContain(`the committed checkpoint ${stopped.checkpointDir} (step ${stopped.step}) fails its checks:`);
    expect(out).toMatch(/model\.safetensors: sha256 \w+ does not match the recorded \w+ \(corrupted\)/);
    const back = new RegExp(`going back to the previous valid checkpoint .*step-(\\d+) \\(step (\\d+), epoch \\d\\)`).exec(out)!;
    expect(Number(back[2])).toBeLessThan(stopped.step);
    expect(existsSync(stale)).toBe(false);
    expectLedgerOnce(runDir, 3, DEMO_SAMPLES);
  });
});

describe('checkpoints while the job runs', () => {
  test('the committed checkpoint found corrupt by the trainers restoring it: launch goes back to the previous valid one, restarts every process, and the job finishes with every sample once', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-corrupt-live-'));
    const l = launch(runDir, ['--train.epochs', '3', '--checkpoint.keep', '20'], 100);
    const root = join(runDir, 'checkpoints');
    const steps = () => (existsSync(root) ? readdirSync(root).filter((n) => /^step-\d+$/.test(n)).sort() : []);
    await waitUntil('three checkpoints', () => steps().length >= 3, 120_000);
    // Every checkpoint but the oldest gets a flipped byte in its model, so that the committed one (the newest, or
    // the one before it while the newest awaits its commit) is surely corrupt; then both trainers are killed, and
    // the trainers started again must restore it.
    const [oldest, ...rest] = steps();
    for (const d of rest) {
      const model = join(root, d, 'model.safetensors');
      const bytes = readFileSync(model);
      bytes[bytes.length - 1] ^= 0xff;
      writeFileSync(model, bytes);
    }
    for (const name of ['trainer-0', 'trainer-1']) process.kill(pidOf(runDir, name)!, 'SIGKILL');
    l.pace(FAST_STEP_MS); // the faults are in: the trainers started again run the rest of the job quickly
    expect(await l.exited, l.output()).toBe(0);
    const out = l.output();
    expect(out).toMatch(/trainer-\d exited with code 2, and the committed checkpoint fails its checks: stopping every process to go back to the previous valid one; its last lines [^\n]*\n[\s\S]*cannot restore the committed checkpoint/);
    expect(out).toMatch(/the committed checkpoint \S+step-\d+ \(step \d+\) fails its checks: .*model\.safetensors: sha256 \w+ does not match/);
    expect(out).toContain(`going back to the previous valid checkpoint ${join(root, oldest!)}`);
    expect(out).toMatch(/started the coordinator and 2 trainer\(s\) again from the previous valid checkpoint/);
    expect(out).toMatch(/job blip2-demo finished after/);
    expectLedgerOnce(runDir, 3, DEMO_SAMPLES);
  });
});
