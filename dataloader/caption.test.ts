// preCaption against LAVIS's BlipCaptionProcessor.pre_caption.
import { describe, expect, test } from 'vitest';
import { preCaption } from './caption';

describe('preCaption (LAVIS BlipCaptionProcessor.pre_caption)', () => {
  test.each([
    ['A Dog! (running) on "grass".', 'a dog running on grass'],
    ['two  cats*; one # sleeping:~ ', 'two cats one sleeping'],
    ['Hello.\n', 'hello'],
    ["it's a cat, isn't it?", "it's a cat, isn't it?"],
  ])('%j -> %j', (input, want) => {
    expect(preCaption(input)).toBe(want);
  });

  test('keeps at most maxWords words', () => {
    const long = Array.from({ length: 60 }, (_, i) => `w${i}`).join(' ');
    expect(preCaption(long).split(' ')).toHaveLength(50);
    expect(preCaption(long, 5)).toBe('w0 w1 w2 w3 w4');
  });
});
