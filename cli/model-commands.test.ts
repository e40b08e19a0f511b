// `blip2 params` through the real command (bin/blip2.js).
import { execFileSync, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, test } from 'vitest';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'blip2.js');

test('blip2 params prints the trainable counts of the original modules', () => {
  expect(execFileSync('node', [bin, 'params', '--preset', 'blip2-opt-2.7b', '--stage', '1'], { encoding: 'utf8' })).toContain('186,705,470 trainable parameters');
  expect(execFileSync('node', [bin, 'params', '--stage', '2'], { encoding: 'utf8' })).toContain('107,133,696 trainable parameters');
  const bad = spawnSync('node', [bin, 'params', '--stage', '3'], { encoding: 'utf8' });
  expect(bad.status).not.toBe(0);
  expect(bad.stderr).toContain('--stage must be 1 or 2, got "3"');
});
