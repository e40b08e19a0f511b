// The config's list of model presets (common/ imports nothing from the model) must match the model's own.
import { expect, test } from 'vitest';
import { MODEL_PRESETS } from '../common';
import { PRESETS } from '../trainer/model/config';

test('model.preset accepts exactly the presets trainer/model defines', () => {
  expect([...MODEL_PRESETS].sort()).toEqual(Object.keys(PRESETS).sort());
});
