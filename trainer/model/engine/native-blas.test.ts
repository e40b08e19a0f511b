import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect, test } from 'vitest';
import { loadNativeBlas, NATIVE_BLAS_PATH } from './native-blas';

test('a missing addon is reported, not thrown, so the engine falls back to XNNPACK', () => {
  const { blas, reason } = loadNativeBlas(1, path.join(os.tmpdir(), 'no-such-dir', 'blas.node'));
  expect(blas).toBeUndefined();
  expect(reason).toMatch(/no-such-dir.*not built/);
});

test('an addon that does not load is reported, not thrown', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blas-test-'));
  const bad = path.join(dir, 'blas.node');
  fs.writeFileSync(bad, 'not a shared object');
  const { blas, reason } = loadNativeBlas(1, bad);
  expect(blas).toBeUndefined();
  expect(reason).toMatch(/failed to load/);
  fs.rmSync(dir, { recursive: true });
});

// test/setup/install.sh builds the addon; where it could not (no OpenBLAS), the checks below do not apply.
test.runIf(fs.existsSync(NATIVE_BLAS_PATH))('the built addon computes batched, transposed, broadcast sgemm', () => {
  const { blas, reason } = loadNativeBlas(2);
  expect(reason).toBeUndefined();
  expect(blas!.getThreads()).toBe(2);
  const shared = new Float32Array(new SharedArrayBuffer(4 * 64)); // the wasm heap is a shared buffer
  const a = shared.subarray(0, 12); // 2 batches of [2×3], stored transposed: [3×2]
  const b = shared.subarray(12, 18); // one [3×2] matrix, repeated (stride 0)
  const out = shared.subarray(18, 26); // 2 × [2×2]
  a.set([1, 4, 2, 5, 3, 6, 0, 1, 1, 0, 2, 2]);
  b.set([1, 0, 0, 1, 1, 1]);
  blas!.sgemm(a, b, out, 2, 2, 3, true, false, 2, 6, 0);
  // batch 0: A = [[1,2,3],[4,5,6]] → A·B = [[4,5],[10,11]]; batch 1: A = [[0,1,2],[1,0,2]] → [[2,3],[3,2]]
  expect(Array.from(out)).toEqual([4, 5, 10, 11, 2, 3, 3, 2]);
  expect(() => blas!.sgemm(a, b, out, 2, 2, 3, true, false, 3, 6, 0)).toThrow(/exceed/);
  expect(() => blas!.sgemm(a, [] as unknown as Float32Array, out, 2, 2, 3, true, false, 1, 0, 0)).toThrow(/Float32Array/);
});
