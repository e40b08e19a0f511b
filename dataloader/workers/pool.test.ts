// The transform worker pool: same pixels as the calling thread, per-request failures, a dead worker failing the pool.
import sharp from 'sharp';
import { describe, expect, test } from 'vitest';
import { transformImage } from '../transforms';
import { TransformPool, TransformWorkerError } from './pool';

describe('TransformPool', () => {
  test('workers give the same pixels as the calling thread; a bad image rejects only its own request', async () => {
    const img = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#a05020' } }).jpeg().toBuffer();
    const pool = new TransformPool({ workers: 2, transform: { imageSize: 12 } });
    try {
      const [a, bad, b] = await Promise.allSettled([pool.run(img, [1, 'x']), pool.run(new Uint8Array(10), [1, 'y']), pool.run(img, [1, 'z'])]);
      expect(bad.status).toBe('rejected');
      const local = await transformImage(img, { imageSize: 12 }, [1, 'x']);
      expect(a.status === 'fulfilled' && Array.from(a.value.pixels)).toEqual(Array.from(local.pixels));
      expect(b.status).toBe('fulfilled');
    } finally {
      await pool.close();
    }
  });

  test('a worker that dies fails the pool with TransformWorkerError (not a skipped sample)', async () => {
    const img = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#000' } }).png().toBuffer();
    const pool = new TransformPool({ workers: 1, transform: { imageSize: 8 } });
    const worker = (pool as unknown as { slots: Array<{ worker: { terminate(): Promise<number> } }> }).slots[0]!.worker;
    const pending = pool.run(img, [0]);
    await worker.terminate();
    await expect(pending).rejects.toBeInstanceOf(TransformWorkerError);
    await expect(pool.run(img, [1])).rejects.toBeInstanceOf(TransformWorkerError);
    await pool.close();
  });
});
