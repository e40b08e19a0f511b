// `blip2 params` through the real command (bin/blip2.js), and the preset list its help names without loading the model.
import { execFileSync, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, test } from 'vitest';
import { PRESETS } from '../trainer/model';
import { PARAMS_PRESETS } from './model-commands';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'blip2.js');

test('blip2 params prints the trainable counts of the original modules', () => {
  expect(execFileSync('node', [bin, 'params', '--preset', 'blip2-opt-2.7b', '--stage', '1'], { encoding: 'utf8' })).toContain('186,705,470 trainable parameters');
  expect(execFileSync('node', [bin, 'params', '--stage', '2'], { encoding: 'utf8' })).toContain('107,133,696 trainable parameters');
  // blip2-opt-6.7b: the same Q-Former; language_projection 768 -> 4096 instead of 768 -> 2560.
  expect(execFileSync('node', [bin, 'params', '--preset', 'blip2-opt-6.7b', '--stage', '2'], { encoding: 'utf8' })).toContain(`${(107_133_696 - (768 * 2560 + 2560) + (768 * 4096 + 4096)).toLocaleString('en-US')} trainable parameters`);
  const bad = spawnSync('node', [bin, 'params', '--stage', '3'], { encoding: 'utf8' });
  expect(bad.status).not.toBe(0);
  expect(bad.stderr).toContain('--stage must be 1 or 2, got "3"');
});

test("params' --preset help names trainer/model's presets, in their order, without loading the model", () => {
  expect([...PARAMS_PRESETS]).toEqual(Object.keys(PRESETS));
});
