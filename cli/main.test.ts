// The `blip2` command's exit statuses and messages through the real command (bin/blip2.js): usage errors exit 2 with
// one `blip2: …` line, a missing path is a message rather than a stack trace, help and --version exit 0.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';

const root = join(import.meta.dirname, '..');
const bin = join(root, 'bin', 'blip2.js');
const blip2 = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
const tmp = mkdtempSync(join(tmpdir(), 'blip2-main-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Exit 2, and stderr is exactly one line starting `blip2: ` that matches `message`; nothing on stdout. */
function expectUsageError(r: ReturnType<typeof blip2>, message: RegExp): void {
  expect(r.status, r.stderr).toBe(2);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).toMatch(/^blip2: [^\n]+\n$/);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect(r.stdout).toBe('');
}

test('commander\'s usage errors exit 2 with one line that points to the help', () => {
  expectUsageError(blip2('bogus'), /^blip2: unknown command 'bogus' \(see `blip2 --help`\)/);
  expectUsageError(blip2('params', '--bogus'), /^blip2: unknown option '--bogus' \(see `blip2 params --help`\)/);
  expectUsageError(
    blip2('data', 'synth', '--out', tmp, '--samples', 'abc'),
    /--samples must be an integer, got "abc" \(see `blip2 data synth --help`\)/,
  );
  expectUsageError(blip2('data', 'synth'), /required option '--out <dir>' not specified/);
  expectUsageError(blip2('launch', '--target', 'k8s'), /argument 'k8s' is invalid\. Allowed choices are local, kubernetes/);
}, 120_000);

test('bad values found by a command exit 2 with their message', () => {
  expectUsageError(blip2('data', 'synth', '--out', tmp, '--format', 'gif'), /^blip2: --format must be jpeg or png, got "gif"$/m);
  expectUsageError(blip2('params', '--stage', '3'), /^blip2: --stage must be 1 or 2, got "3"$/m);
  expectUsageError(blip2('config', '--config', join(tmp, 'missing.yaml')), /missing\.yaml: not found/);
}, 120_000);

test('a missing or wrong path is a one-line message, not a stack trace', () => {
  const missing = join(tmp, 'no-such-dir');
  expectUsageError(blip2('data', 'index', missing), new RegExp(`^blip2: ${missing}: no such folder$`, 'm'));
  expectUsageError(blip2('data', 'index', bin), /: not a folder/);
  // A file where a folder must be created: Node's error, turned into a line at the edge.
  expectUsageError(blip2('data', 'synth', '--out', join(bin, 'out'), '--samples', '2'), /^blip2: cannot create .*blip2\.js\/out: .*blip2\.js is a file, not a folder$/m);
}, 120_000);

test('--version prints the package version; help exits 0', () => {
  const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = blip2(flag);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${version}\n`);
  }
  const help = blip2('--help');
  expect(help.status).toBe(0);
  expect(help.stdout).toMatch(/-V, --version/);
  expect(blip2('data', 'synth', '--help').status).toBe(0);
}, 120_000);
