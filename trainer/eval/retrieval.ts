/**
 * Image-text retrieval as LAVIS evaluates BLIP-2 (spec §13; blip2.py `compute_sim_matrix`, tasks/retrieval.py
 * `_report_metrics`): recall@1/5/10 in both directions from score matrices, the k-re-ranking step (the top k of
 * the ITC similarity re-scored as ITM + ITC, every other entry −100) over a caller's pair scorer, and the chance
 * level of each recall.
 *
 * Ranks: an image's rank is the best rank among its ground-truth texts; a text's rank is the rank of its one image.
 * A candidate tied with the target is counted ahead of it (pessimistic), so a constant score matrix scores at chance
 * or below instead of a perfect 100 (numpy's argsort leaves the order of ties to the sort).
 */

/** LAVIS's keys: percentages (0..100). */
export interface RetrievalMetrics {
  txt_r1: number;
  txt_r5: number;
  txt_r10: number;
  txt_r_mean: number;
  img_r1: number;
  img_r5: number;
  img_r10: number;
  img_r_mean: number;
  r_mean: number;
  agg_metrics: number;
}

export type Matrix = ArrayLike<number>[];

/** Rank (0-based) of column `target` in `row`, ties counted ahead of it. */
function rankOf(row: ArrayLike<number>, target: number): number {
  const t = row[target]!;
  let rank = 0;
  for (let j = 0; j < row.length; j++) if (j !== target && !(row[j]! < t)) rank++;
  return rank;
}

const pct = (ranks: number[], k: number) => (100 * ranks.filter((r) => r < k).length) / Math.max(1, ranks.length);

/**
 * Recall metrics from `scoresI2t` [images][texts] and `scoresT2i` [texts][images], with `imgToTexts[i]` the
 * ground-truth texts of image i and `textToImg[t]` the image of text t.
 */
export function retrievalMetrics(scoresI2t: Matrix, scoresT2i: Matrix, imgToTexts: readonly (readonly number[])[], textToImg: readonly number[]): RetrievalMetrics {
  if (scoresI2t.length !== imgToTexts.length) throw new Error(`retrievalMetrics: ${scoresI2t.length} image rows but ${imgToTexts.length} image ground truths`);
  if (scoresT2i.length !== textToImg.length) throw new Error(`retrievalMetrics: ${scoresT2i.length} text rows but ${textToImg.length} text ground truths`);
  const i2t = scoresI2t.map((row, i) => Math.min(...imgToTexts[i]!.map((t) => rankOf(row, t))));
  const t2i = scoresT2i.map((row, t) => rankOf(row, textToImg[t]!));
  const tr = [pct(i2t, 1), pct(i2t, 5), pct(i2t, 10)] as const;
  const ir = [pct(t2i, 1), pct(t2i, 5), pct(t2i, 10)] as const;
  const trMean = (tr[0] + tr[1] + tr[2]) / 3;
  const irMean = (ir[0] + ir[1] + ir[2]) / 3;
  return {
    txt_r1: tr[0], txt_r5: tr[1], txt_r10: tr[2], txt_r_mean: trMean,
    img_r1: ir[0], img_r5: ir[1], img_r10: ir[2], img_r_mean: irMean,
    r_mean: (trMean + irMean) / 2, agg_metrics: trMean,
  };
}

/**
 * The chance that a random order of `m` candidates puts at least one of `g` targets in its first `k`:
 * 1 − C(m − g, k) / C(m, k), the ratio taken as a product (no overflow).
 */
export function recallChance(m: number, g: number, k: number): number {
  const kk = Math.min(k, m);
  if (kk > m - g) return 1;
  let miss = 1;
  for (let i = 0; i < kk; i++) miss *= (m - g - i) / (m - i);
  return 1 - miss;
}

/** Expected recall (%) of a scorer that ranks at random: i2t from each image's number of ground-truth texts. */
export function retrievalChance(imgToTexts: readonly (readonly number[])[], numTexts: number): Pick<RetrievalMetrics, 'txt_r1' | 'txt_r5' | 'txt_r10' | 'img_r1' | 'img_r5' | 'img_r10'> {
  const numImages = imgToTexts.length;
  const txt = (k: number) => (100 * imgToTexts.reduce((s, g) => s + recallChance(numTexts, g.length, k), 0)) / Math.max(1, numImages);
  const img = (k: number) => 100 * recallChance(numImages, 1, k);
  return { txt_r1: txt(1), txt_r5: txt(5), txt_r10: txt(10), img_r1: img(1), img_r5: img(5), img_r10: img(10) };
}

/** Indices of the k largest entries of a row, largest first (ties: lower index first). */
export function topK(row: ArrayLike<number>, k: number): number[] {
  if (k <= 0) return []; // ITC only (the attribute probe): nothing to sort
  const idx = Array.from({ length: row.length }, (_, j) => j);
  idx.sort((a, b) => row[b]! - row[a]! || a - b);
  return idx.slice(0, Math.min(k, row.length));
}

/** ITM scores of (image, text) pairs: LAVIS's positive-class logit averaged over the queries. */
export type PairScorer = (pairs: ReadonlyArray<readonly [image: number, text: number]>) => ArrayLike<number> | Promise<ArrayLike<number>>;

/**
 * `compute_sim_matrix`'s second half: for every image the top `k` texts by ITC similarity `simI2t`
 * [images][texts] get ITM + ITC, for every text the top `k` images by the transposed similarity the same; every
 * other entry is −100. `k` is capped at the number of candidates. Returns both score matrices.
 */
export async function rerankTopK(simI2t: Matrix, k: number, itm: PairScorer): Promise<{ scoresI2t: Float64Array[]; scoresT2i: Float64Array[] }> {
  const numImages = simI2t.length;
  const numTexts = simI2t[0]?.length ?? 0;
  const scoresI2t = Array.from({ length: numImages }, () => new Float64Array(numTexts).fill(-100));
  const scoresT2i = Array.from({ length: numTexts }, () => new Float64Array(numImages).fill(-100));
  for (let i = 0; i < numImages; i++) {
    const top = topK(simI2t[i]!, k);
    const s = await itm(top.map((t) => [i, t] as const));
    top.forEach((t, j) => { scoresI2t[i]![t] = s[j]! + simI2t[i]![t]!; });
  }
  for (let t = 0; t < numTexts; t++) {
    const column = Float64Array.from({ length: numImages }, (_, i) => simI2t[i]![t]!);
    const top = topK(column, k);
    const s = await itm(top.map((i) => [i, t] as const));
    top.forEach((i, j) => { scoresT2i[t]![i] = s[j]! + column[i]!; });
  }
  return { scoresI2t, scoresT2i };
}
