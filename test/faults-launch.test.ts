/**
 * `blip2 launch` refuses, on the console and before any process starts, a job that could never run: fewer trainers
 * than world.min, an index with no dataset to train on, datasets without a sample, a checkpoint directory that
 * cannot be written. When a process fails, the console shows its last error lines; while the job waits for
 * trainers, the console says so. Progress reports that are malformed or not from a member are ignored and cannot
 * change the outcome; the job's own nats-server refuses a client without the job's credentials. Real launcher
 * processes (`bin/blip2.js launch`), real nats-server.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { describe, expect, test } from 'vitest';
import { jobSubjects } from '../common';
import { writeSynthDataset } from '../dataloader';
import { repoRoot, waitUntil } from './helpers/procs';

function launch(runDir: string, extra: string[], entry = 'test/fixtures/standin-trainer.ts', stepMs = 10) {
  const child = spawn(
    process.execPath,
    [join(repoRoot, 'bin/blip2.js'), 'launch', '--trainer-entry', entry, '--job.runDir', runDir,
      '--membership.heartbeatMs', '100', '--membership.timeoutMs', '1500', '--world.rendezvousSettleMs', '300',
      // The demo's stage-1 phase only, on the smaller data the stand-ins were written for.
      '--phases', 'stage1', '--data.synthSamples', '96', '--train.epochs', '2', ...extra],
    { cwd: repoRoot, env: { ...process.env, STANDIN_STEP_MS: String(stepMs) }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { output: () => out, exited };
}

/** Refused with exit 2 and `message`, before NATS or any process was started. */
async function refused(runDir: string, extra: string[], message: RegExp): Promise<string> {
  const l = launch(runDir, extra);
  expect(await l.exited, l.output()).toBe(2);
  expect(l.output()).toMatch(message);
  expect(l.output()).not.toMatch(/nats-server started|started the coordinator/);
  expect(existsSync(join(runDir, 'logs', 'coordinator.log'))).toBe(false);
  expect(l.output()).not.toMatch(/^\s+at /m); // no stack trace
  return l.output();
}

describe('blip2 launch refuses up front', () => {
  test('world.trainers below world.min', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-refuse-'));
    await refused(runDir, ['--world.trainers', '1', '--world.min', '2'], /world\.trainers is 1, below world\.min 2/);
  });

  test('launch.target kubernetes in the config: a local launch says how to write the manifests', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-refuse-'));
    await refused(runDir, ['--launch.target', 'kubernetes'], /launch\.target "kubernetes": this launch runs the job here; for Kubernetes write its manifests with `blip2 launch --target kubernetes --render-dir DIR`/);
  });

  test('an index with no dataset to train on, and datasets that hold no sample', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-refuse-'));
    const dataRoot = join(runDir, 'own-data');
    await writeSynthDataset({ out: dataRoot, samples: 24, shardSize: 12, imageSize: 16, seed: 1 });
    const indexPath = join(dataRoot, 'index.json');
    const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { datasets: { name: string; split?: string; samples: number; shards: { samples: number }[] }[] };
    // Only the val split: nothing to train on.
    writeFileSync(indexPath, JSON.stringify({ ...index, datasets: index.datasets.filter((d) => d.split === 'val') }));
    await refused(runDir, ['--data.root', dataRoot], /index\.json has no dataset to train on \(only val\/test splits: val/);
    // No dataset at all.
    writeFileSync(indexPath, JSON.stringify({ ...index, datasets: [] }));
    await refused(runDir, ['--data.root', dataRoot], /index\.json has no dataset to train on \(its dataset list is empty\)/);
    // A train split whose shards hold no sample.
    const empty = index.datasets.map((d) => ({ ...d, samples: 0, shards: d.shards.map((s) => ({ ...s, samples: 0 })) }));
    writeFileSync(indexPath, JSON.stringify({ ...index, datasets: empty }));
    await refused(runDir, ['--data.root', dataRoot], /hold no usable sample/);
  });

  test('a checkpoint directory that cannot be written', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-refuse-'));
    const notADir = join(runDir, 'a-file');
    writeFileSync(notADir, 'x');
    await refused(runDir, ['--checkpoint.dir', join(notADir, 'checkpoints')], /checkpoint\.dir .*a-file\/checkpoints is not writable \((ENOTDIR|EEXIST)\)/);
  });
});

describe('blip2 launch says what goes on', () => {
  test('trainers that fail: the console shows their last error lines; the wait for trainers is shown', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-fail-'));
    const l = launch(runDir, ['--world.trainers', '2', '--world.min', '2', '--launch.restarts', '0'], 'test/fixtures/failing-trainer.ts');
    expect(await l.exited, l.output()).toBe(1);
    const out = l.output();
    expect(out).toMatch(/waiting for trainers: 0 of world\.min 2 registered/);
    expect(out).toMatch(/trainer-[01] exited with code 1 \(not restarted: launch\.restarts is 0\); its last lines \(.*trainer-[01]\.log\):\n.*cannot open the shard stream: simulated failure/);
    expect(out).toMatch(/job failed: every trainer exited before the job finished/);
  });

  test('the job\'s nats-server refuses clients without the job\'s user; bad and spoofed progress reports are ignored, the exit status comes from the job state', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'blip2-progress-'));
    const l = launch(runDir, [], 'test/fixtures/standin-trainer.ts', 300);
    const url = await waitUntil('the nats-server', () => /nats-server started at (nats:\/\/[0-9.:]+)/.exec(l.output())?.[1], 60_000);
    await waitUntil('the first progress line', () => /epoch 1\/2 {2}step \d+/.test(l.output()), 60_000);
    // The job's nats-server lets in only the job's user, whose password is in <runDir>/nats.json (mode 0600).
    await expect(connect({ servers: url, reconnect: false })).rejects.toThrow(/authori[sz]ation/i);
    const natsFile = join(runDir, 'nats.json');
    expect(statSync(natsFile).mode & 0o777).toBe(0o600);
    const creds = JSON.parse(readFileSync(natsFile, 'utf8')) as { url: string; user: string; password: string; roles: Record<string, { user: string; password: string }> };
    expect(creds.url).toBe(url);
    expect(l.output()).not.toContain(creds.password);
    // `blip2 status` finds the launched job's server and user by itself.
    const status = spawnSync(process.execPath, [join(repoRoot, 'bin/blip2.js'), 'status', '--job.runDir', runDir], { cwd: repoRoot, encoding: 'utf8' });
    expect(status.status, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/job blip2-demo: running/);
    // The launcher's own user (creds.user) may not publish progress at all: a trainer's user may, so it is the one a
    // spoofed report could come from.
    const nc = await connect({ servers: url, user: creds.roles.trainer!.user, pass: creds.roles.trainer!.password });
    const subject = jobSubjects('blip2-demo').progress;
    const report = { nodeId: 'trainer-0', generation: 1, step: 999_999, epoch: 0, losses: { itc: 0.0001 }, samples: 1, samplesPerSec: 1e6, time: Date.now() };
    for (const payload of ['null', 'garbage', '{}', '[]', JSON.stringify({ nodeId: 'trainer-0' }), JSON.stringify({ ...report, samplesPerSec: 'fast' }),
      JSON.stringify({ ...report, nodeId: 'intruder' })]) {
      nc.publish(subject, new TextEncoder().encode(payload));
    }
    await nc.flush();
    await nc.close();
    expect(await l.exited, l.output()).toBe(0);
    const out = l.output();
    expect(out).toMatch(/ignored a progress report \(1 so far\): message: must be a JSON object, got null/);
    expect(out).not.toMatch(/step 999999/);
    expect(out).toMatch(/job blip2-demo finished after/);
    expect(out).toMatch(/epoch 2\/2 {2}step \d+/); // the display went on after the bad reports
    const summary = JSON.parse(readFileSync(join(runDir, 'summary.json'), 'utf8')) as { status: string; losses: Record<string, number> };
    expect(summary.status).toBe('finished');
    expect(summary.losses.itc).not.toBe(0.0001);
  });
});
