// The distributed step's row fetching over world shapes with unequal (and empty) batches.
import { describe, expect, it } from 'vitest';
import { createLocalGroup } from './local-group';
import { fetchRows } from './step';
import { uniformAt } from '../common';

const split = (sizes: number[]) => sizes.map((_, r) => sizes.slice(0, r).reduce((a, c) => a + c, 0));

describe.each([
  { sizes: [3] },
  { sizes: [2, 3] },
  { sizes: [2, 0, 3] },
  { sizes: [1, 4, 2, 1] },
])('step building blocks over world shape $sizes', ({ sizes }) => {
  const B = sizes.reduce((a, c) => a + c, 0);
  const rowLength = 5;
  const table = Float32Array.from({ length: B * rowLength }, (_, i) => i * 0.5 - 3);

  it('fetchRows returns every wanted global row, wherever it lives', async () => {
    const group = createLocalGroup(sizes.length);
    const offsets = split(sizes);
    const wantedOf = (r: number) => Array.from({ length: sizes[r]! + 1 }, (_, k) => Math.floor(uniformAt('w', r, k) * B));
    const got = await Promise.all(group.map((coll, r) =>
      fetchRows(coll, table.slice(offsets[r]! * rowLength, (offsets[r]! + sizes[r]!) * rowLength), rowLength, sizes, wantedOf(r))));
    got.forEach((rows, r) => {
      const want = wantedOf(r).flatMap((g) => Array.from(table.subarray(g * rowLength, (g + 1) * rowLength)));
      expect(Array.from(rows)).toEqual(want);
    });
  });
});
