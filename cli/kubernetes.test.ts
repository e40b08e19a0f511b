// `blip2 launch --target kubernetes` through the real command: the Secret in its own 0600 file, the job token kept
// across renders of the same job, and a job id Kubernetes cannot use refused with exit 2 before anything is written.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { expect, test } from 'vitest';

const repoRoot = resolve(import.meta.dirname, '..');
const blip2 = (args: string[]) => {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BLIP2_')));
  return spawnSync(process.execPath, [join(repoRoot, 'bin/blip2.js'), ...args], { cwd: repoRoot, encoding: 'utf8', env });
};
const tokenOf = (file: string) => (parseAllDocuments(readFileSync(file, 'utf8'))[0]!.toJS() as { stringData: { BLIP2_JOB_TOKEN: string } }).stringData.BLIP2_JOB_TOKEN;

test('renders the Secret 0600 apart from the rest, and keeps the job token across renders', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'blip2-render-')), 'out');
  const render = () => blip2(['launch', '--target', 'kubernetes', '--render-dir', dir, '--image', 'reg/blip2:2', '--job.id', 'coco-s1']);
  const first = render();
  expect(first.status, first.stderr).toBe(0);
  expect(first.stdout).toContain(`wrote ${join(dir, 'coco-s1.yaml')} and ${join(dir, 'coco-s1-secret.yaml')} (the job token, mode 0600; new)`);
  const secretFile = join(dir, 'coco-s1-secret.yaml');
  expect(statSync(secretFile).mode & 0o777).toBe(0o600);
  const token = tokenOf(secretFile);
  expect(token).toMatch(/^[0-9a-f]{32}$/);
  expect(readFileSync(join(dir, 'coco-s1.yaml'), 'utf8')).not.toContain(token);
  expect(readFileSync(join(dir, 'coco-s1.yaml'), 'utf8')).toContain('image: reg/blip2:2');

  writeFileSync(secretFile, readFileSync(secretFile), { mode: 0o644 });
  const again = render();
  expect(again.status, again.stderr).toBe(0);
  expect(again.stdout).toContain('kept from the earlier render');
  expect(tokenOf(secretFile)).toBe(token);
  expect(statSync(secretFile).mode & 0o777).toBe(0o600);

  // An explicit token wins over the kept one.
  const explicit = blip2(['launch', '--target', 'kubernetes', '--render-dir', dir, '--job.id', 'coco-s1', '--job.token', 'given-token']);
  expect(explicit.status, explicit.stderr).toBe(0);
  expect(tokenOf(secretFile)).toBe('given-token');
});

test('a job id that cannot name Kubernetes objects exits 2 with one line and writes nothing', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'blip2-render-')), 'out');
  const r = blip2(['launch', '--target', 'kubernetes', '--render-dir', dir, '--job.id', 'Coco_S1']);
  expect(r.status).toBe(2);
  expect(r.stderr.trim()).toMatch(/^blip2: job\.id "Coco_S1" cannot name Kubernetes objects \(a DNS-1035 label\): .*e\.g\. "coco-s1"$/);
  expect(existsSync(dir)).toBe(false);
  const mem = blip2(['launch', '--target', 'kubernetes', '--render-dir', dir, '--trainer-memory', '8 GB']);
  expect(mem.status).toBe(2);
  expect(mem.stderr).toMatch(/^blip2: the rendered Job blip2-demo-trainer is not valid Kubernetes/);
});
