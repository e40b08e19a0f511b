/**
 * Corpus BLEU-1..n as the COCO caption evaluation computes it (pycocoevalcap `BleuScorer`, option "closest"):
 * clipped n-gram matches and guesses summed over the corpus, the geometric mean of the precisions with its 1e-15 /
 * 1e-9 guards, and one brevity penalty exp(1 − r/c) from the summed test length c and the summed reference length
 * r, where each caption contributes the reference length closest to its own (the shorter one on a tie).
 * Inputs are already tokenised: words are split on whitespace.
 */

/** n-gram counts of a whitespace-split sentence, n = 1..maxN, keyed by the words joined with a space. */
export function ngramCounts(words: readonly string[], maxN: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (let k = 1; k <= maxN; k++) {
    for (let i = 0; i + k <= words.length; i++) {
      const g = words.slice(i, i + k).join(' ');
      counts.set(g, (counts.get(g) ?? 0) + 1);
    }
  }
  return counts;
}

/** The order of an n-gram key made by `ngramCounts`. */
export const ngramOrder = (key: string): number => key.split(' ').length;

export interface BleuResult {
  /** Corpus BLEU-1..n, each with the brevity penalty. */
  bleu: number[];
  /** Per caption BLEU-k (no brevity penalty), as pycocoevalcap's second return value. */
  perCaption: number[][];
  /** Summed test length and effective reference length. */
  testLength: number;
  referenceLength: number;
}

const TINY = 1e-15;
const SMALL = 1e-9;

/** Corpus BLEU of tokenised hypotheses (one per item) against their tokenised references (one or more). */
export function corpusBleu(items: ReadonlyArray<{ hypothesis: string; references: readonly string[] }>, maxN = 4): BleuResult {
  const correct = new Array<number>(maxN).fill(0);
  const guess = new Array<number>(maxN).fill(0);
  const perCaption: number[][] = Array.from({ length: maxN }, () => []);
  let testLength = 0;
  let referenceLength = 0;
  for (const { hypothesis, references } of items) {
    if (references.length === 0) throw new Error('corpusBleu: an item has no references');
    const refLens: number[] = [];
    const maxCounts = new Map<string, number>();
    for (const ref of references) {
      const words = ref.split(/\s+/).filter(Boolean);
      refLens.push(words.length);
      for (const [g, c] of ngramCounts(words, maxN)) maxCounts.set(g, Math.max(maxCounts.get(g) ?? 0, c));
    }
    const words = hypothesis.split(/\s+/).filter(Boolean);
    const len = words.length;
    // min over (|l − len|, l): the closest length, the shorter on a tie.
    let closest = refLens[0]!;
    for (const l of refLens) if (Math.abs(l - len) < Math.abs(closest - len) || (Math.abs(l - len) === Math.abs(closest - len) && l < closest)) closest = l;
    testLength += len;
    referenceLength += closest;
    const c = new Array<number>(maxN).fill(0);
    for (const [g, count] of ngramCounts(words, maxN)) c[ngramOrder(g) - 1]! += Math.min(maxCounts.get(g) ?? 0, count);
    for (let k = 0; k < maxN; k++) {
      const gk = Math.max(0, len - k);
      correct[k]! += c[k]!;
      guess[k]! += gk;
      perCaption[k]!.push(((c[k]! + TINY) / (gk + SMALL)) ** (1 / (k + 1)));
    }
  }
  const ratio = (testLength + TINY) / (referenceLength + SMALL);
  const bleu: number[] = [];
  for (let nn = 1; nn <= maxN; nn++) {
    let b = 1;
    for (let k = 0; k < nn; k++) b *= (correct[k]! + TINY) / (guess[k]! + SMALL);
    b = b ** (1 / nn);
    if (ratio < 1) b *= Math.exp(1 - 1 / ratio);
    bleu.push(b);
  }
  return { bleu, perCaption, testLength, referenceLength };
}
