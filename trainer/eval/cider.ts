/**
 * CIDEr-D as the COCO caption evaluation computes it (pycocoevalcap `CiderScorer`, reported as "CIDEr"): n-grams
 * 1..4 weighted by tf·idf with document frequencies counted over the references of the evaluated set (idf =
 * ln(#images) − ln(max(1, df))), per order the clipped cosine Σ min(h, r)·r / (‖h‖‖r‖) times the Gaussian length
 * penalty exp(−δ²/2σ²) (σ = 6; δ is the difference of the two captions' bigram counts, as the reference code counts
 * "length"), averaged over the orders and the references, × 10, then averaged over images. A zero norm leaves the
 * order's sum undivided (0), as the pip release of pycocoevalcap does. Inputs are already tokenised.
 */
import { ngramCounts, ngramOrder } from './bleu';

export interface CiderResult {
  score: number;
  perImage: number[];
}

interface Vec {
  vec: Map<string, number>[];
  norm: number[];
  length: number;
}

/** CIDEr-D of tokenised hypotheses (one per image) against their tokenised references. */
export function ciderD(items: ReadonlyArray<{ hypothesis: string; references: readonly string[] }>, options: { n?: number; sigma?: number } = {}): CiderResult {
  const n = options.n ?? 4;
  const sigma = options.sigma ?? 6;
  const split = (s: string) => s.split(/\s+/).filter(Boolean);
  const tests = items.map((it) => ngramCounts(split(it.hypothesis), n));
  const refs = items.map((it) => it.references.map((r) => ngramCounts(split(r), n)));
  const df = new Map<string, number>();
  for (const rs of refs) {
    const seen = new Set<string>();
    for (const r of rs) for (const g of r.keys()) seen.add(g);
    for (const g of seen) df.set(g, (df.get(g) ?? 0) + 1);
  }
  const refLen = Math.log(items.length);
  const toVec = (counts: Map<string, number>): Vec => {
    const vec = Array.from({ length: n }, () => new Map<string, number>());
    const sq = new Array<number>(n).fill(0);
    let length = 0;
    for (const [g, tf] of counts) {
      const k = ngramOrder(g) - 1;
      const w = tf * (refLen - Math.log(Math.max(1, df.get(g) ?? 0)));
      vec[k]!.set(g, w);
      sq[k]! += w * w;
      if (k === 1) length += tf;
    }
    return { vec, norm: sq.map(Math.sqrt), length };
  };
  const perImage: number[] = [];
  items.forEach((_, i) => {
    const h = toVec(tests[i]!);
    const score = new Array<number>(n).fill(0);
    for (const refCounts of refs[i]!) {
      const r = toVec(refCounts);
      const delta = h.length - r.length;
      const penalty = Math.E ** (-(delta * delta) / (2 * sigma * sigma));
      for (let k = 0; k < n; k++) {
        let val = 0;
        for (const [g, hv] of h.vec[k]!) {
          const rv = r.vec[k]!.get(g) ?? 0;
          val += Math.min(hv, rv) * rv;
        }
        if (h.norm[k] !== 0 && r.norm[k] !== 0) val /= h.norm[k]! * r.norm[k]!;
        score[k]! += val * penalty;
      }
    }
    const mean = score.reduce((a, b) => a + b, 0) / n;
    perImage.push((mean / refs[i]!.length) * 10);
  });
  const score = perImage.reduce((a, b) => a + b, 0) / Math.max(1, perImage.length);
  return { score, perImage };
}
