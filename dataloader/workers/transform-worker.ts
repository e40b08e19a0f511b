// Decodes and transforms images off the training thread. Messages: TransformRequest in, TransformResponse out.
import { parentPort } from 'node:worker_threads';
import sharp from 'sharp';
import { transformImage } from '../transforms';
import type { TransformRequest, TransformResponse } from './pool';

// One libvips thread per worker: parallelism comes from the workers, and several trainers share the cores.
sharp.concurrency(1);
sharp.cache(false);

parentPort!.on('message', (req: TransformRequest) => {
  const t0 = performance.now();
  transformImage(new Uint8Array(req.bytes), req.options, req.randomKey).then(
    (r) => {
      const res: TransformResponse = {
        id: req.id, ok: true, pixels: r.pixels.buffer as ArrayBuffer, flipped: r.flipped, width: r.width, height: r.height,
        seconds: (performance.now() - t0) / 1000,
      };
      parentPort!.postMessage(res, [res.pixels]);
    },
    (e: unknown) => {
      const res: TransformResponse = { id: req.id, ok: false, error: (e as Error).message ?? String(e) };
      parentPort!.postMessage(res);
    },
  );
});
