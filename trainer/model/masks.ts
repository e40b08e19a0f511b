/**
 * The stage-1 self-attention masks (spec §5.4; LAVIS Qformer.py get_extended_attention_mask), as 0/1 arrays
 * (1 = may attend) of shape [rows, S_query, S_key]. The model turns them into additive masks (-10000 where 0).
 */
export interface AttentionMask {
  /** Row-major 0/1 values. */
  data: Uint8Array;
  shape: [number, number, number];
}

function make(rows: number, sq: number, sk: number, allowed: (r: number, i: number, j: number) => boolean): AttentionMask {
  const data = new Uint8Array(rows * sq * sk);
  for (let r = 0; r < rows; r++) for (let i = 0; i < sq; i++) for (let j = 0; j < sk; j++) data[(r * sq + i) * sk + j] = allowed(r, i, j) ? 1 : 0;
  return { data, shape: [rows, sq, sk] };
}

/** ITC image side, query-only pass [B,Q,Q]: all ones. */
export function itcQueryMask(batch: number, numQuery: number): AttentionMask {
  return make(batch, numQuery, numQuery, () => true);
}

/** ITC text side, text-only pass [B,T,T]: key j allowed iff attention_mask[j] (bidirectional). */
export function itcTextMask(attention: number[][]): AttentionMask {
  const t = attention[0]?.length ?? 0;
  return make(attention.length, t, t, (r, _i, j) => attention[r]![j] === 1);
}

/** ITM, one pass over [queries ; text] [rows,Q+T,Q+T]: key j allowed iff j < Q or text j-Q is not padding. */
export function itmMask(attention: number[][], numQuery: number): AttentionMask {
  const s = numQuery + (attention[0]?.length ?? 0);
  return make(attention.length, s, s, (r, _i, j) => j < numQuery || attention[r]![j - numQuery] === 1);
}

/**
 * ITG, single-pass layout over [queries ; text] [B,Q+T,Q+T]: query rows see only queries; text row i sees all
 * queries and text j ≤ i that is not padding. The model runs only the text rows (Q…Q+T-1) against the query
 * keys/values cached from the ITC query pass, which gives the same values and gradients.
 */
export function itgMask(attention: number[][], numQuery: number): AttentionMask {
  const s = numQuery + (attention[0]?.length ?? 0);
  return make(attention.length, s, s, (r, i, j) => {
    if (j < numQuery) return true;
    if (i < numQuery) return false;
    return j <= i && attention[r]![j - numQuery] === 1;
  });
}

/** Rows [begin, end) of every sample's mask: [B,S,Sk] -> [B,end-begin,Sk]. */
export function maskRows(mask: AttentionMask, begin: number, end: number): AttentionMask {
  const [b, s, sk] = mask.shape;
  const n = end - begin;
  const data = new Uint8Array(b * n * sk);
  for (let r = 0; r < b; r++) data.set(mask.data.subarray((r * s + begin) * sk, (r * s + end) * sk), r * n * sk);
  return { data, shape: [b, n, sk] };
}
