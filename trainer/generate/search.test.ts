// Greedy and beam search on a scripted decoder (next-token probabilities looked up by the sequence so far), where
// the right answers can be worked out by hand: beam search finds the better sequence greedy misses, finished
// hypotheses are scored sum / length^lengthPenalty with the prefix tokens counted, and the minimum length holds.
import { expect, test } from 'vitest';
import { beamSearch, greedySearch, type StepDecoder } from '.';

const EOS = 0;
/** Probabilities of tokens 0 (end), 1 (a), 2 (b), 3 (c) after each sequence; anything else: the end, almost surely. */
const TABLE: Record<string, number[]> = {
  '': [0, 0.5, 0.4, 0.1],
  '1': [0.35, 0.25, 0.2, 0.2],
  '2': [0.9, 0.04, 0.03, 0.03],
  '3': [0.5, 0.2, 0.2, 0.1],
};
const DEFAULT = [0.97, 0.01, 0.01, 0.01];

class Scripted implements StepDecoder {
  seqs: number[][] = [[]];
  readonly vocabSize = 4;
  get rows() { return this.seqs.length; }
  logits(): Float32Array {
    const out = new Float32Array(this.rows * 4);
    this.seqs.forEach((s, r) => (TABLE[s.join(',')] ?? DEFAULT).forEach((p, j) => { out[r * 4 + j] = Math.log(p); }));
    return out;
  }
  append(tokens: readonly number[]) { this.seqs = this.seqs.map((s, r) => [...s, tokens[r]!]); }
  select(rows: readonly number[]) { this.seqs = rows.map((r) => [...this.seqs[r]!]); }
}

// Log-probabilities are computed in float64 from float32 logits of log p: agreement to 1e-6 of the exact value.
const DIGITS = 6;

test('greedy takes a then the end; beam search finds b then the end, the higher-scoring sequence', () => {
  const g = greedySearch(new Scripted(), { eosTokenId: EOS, maxLength: 5 })[0]!;
  expect(g).toEqual({ tokens: [1], score: expect.closeTo(Math.log(0.5) + Math.log(0.35), DIGITS), finished: true });
  const b = beamSearch(new Scripted(), { eosTokenId: EOS, maxLength: 5, beams: 2, lengthPenalty: 0 })[0]!;
  expect(b.tokens).toEqual([2]);
  expect(b.score).toBeCloseTo(Math.log(0.4) + Math.log(0.9), DIGITS);
  expect(b.finished).toBe(true);
});

test('a finished beam is scored over its length, prefix tokens included, to the power lengthPenalty', () => {
  // With one prefix token HF counts 2 positions before the end token of [b]: score = sum / 2.
  const b = beamSearch(new Scripted(), { eosTokenId: EOS, maxLength: 6, beams: 2, lengthPenalty: 1, prefixTokens: [3] })[0]!;
  expect(b.tokens).toEqual([2]);
  expect(b.score).toBeCloseTo((Math.log(0.4) + Math.log(0.9)) / 2, DIGITS);
});

test('the minimum length blocks the end token; the maximum closes running beams as they are', () => {
  // min 2: after [a] the end is refused, greedy takes a again (0.25 > 0.2), then the default row ends it.
  const g = greedySearch(new Scripted(), { eosTokenId: EOS, maxLength: 5, minLength: 2 })[0]!;
  expect(g.tokens).toEqual([1, 1]);
  const b = beamSearch(new Scripted(), { eosTokenId: EOS, maxLength: 5, minLength: 2, beams: 2, lengthPenalty: 0 })[0]!;
  expect(b.tokens.length).toBeGreaterThanOrEqual(2);
  // Best of length 2: [b,a] = .4·.04·.97, [a,a] = .5·.25·.97, [a,b] = .5·.2·.97 … -> [a,a].
  expect(b.tokens).toEqual([1, 1]);
  expect(b.score).toBeCloseTo(Math.log(0.5) + Math.log(0.25) + Math.log(0.97), DIGITS);
  const capped = beamSearch(new Scripted(), { eosTokenId: EOS, maxLength: 1, minLength: 5, beams: 2, lengthPenalty: 0 })[0]!;
  expect(capped).toEqual({ tokens: [1], score: expect.closeTo(Math.log(0.5), DIGITS), finished: false });
});
