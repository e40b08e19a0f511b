/**
 * A pool of worker threads that decode and transform images (sharp + BLIP-2 transforms), so the training thread
 * only assembles batches. `workers: 0` runs the transform on the calling thread (libvips still decodes off the
 * JS thread, but normalisation does not).
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { transformImage, type TransformOptions } from '../transforms';

export interface TransformRequest {
  id: number;
  bytes: ArrayBuffer;
  options: TransformOptions;
  randomKey: Array<string | number>;
}

export type TransformResponse =
  | { id: number; ok: true; pixels: ArrayBuffer; flipped: boolean; width: number; height: number; seconds: number }
  | { id: number; ok: false; error: string };

export interface TransformResult {
  /** [3, S, S] */
  pixels: Float32Array;
  flipped: boolean;
  /** Decode + transform time, seconds. */
  seconds: number;
}

/** A decode worker died (not a bad image): the pool is unusable; the batch stream fails instead of skipping. */
export class TransformWorkerError extends Error {
  override name = 'TransformWorkerError';
}

export interface TransformPoolOptions {
  /** Worker threads. Default 1; 0 transforms on the calling thread. */
  workers?: number;
  transform?: TransformOptions;
}

const WORKER_ENTRY = fileURLToPath(new URL('./transform-worker.mjs', import.meta.url));

interface Slot {
  worker: Worker;
  busy: number;
}

export class TransformPool {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, { resolve: (r: TransformResult) => void; reject: (e: Error) => void; slot: Slot }>();
  private nextId = 0;
  private readonly transform: TransformOptions;
  private closed = false;
  private broken: Error | undefined;

  constructor(options: TransformPoolOptions = {}) {
    const n = options.workers ?? 1;
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`workers must be a non-negative integer, got ${n}`);
    this.transform = options.transform ?? {};
    for (let i = 0; i < n; i++) {
      const worker = new Worker(WORKER_ENTRY);
      const slot: Slot = { worker, busy: 0 };
      worker.on('message', (res: TransformResponse) => {
        const p = this.pending.get(res.id);
        if (!p) return;
        this.pending.delete(res.id);
        if (--slot.busy === 0) worker.unref();
        if (res.ok) p.resolve({ pixels: new Float32Array(res.pixels), flipped: res.flipped, seconds: res.seconds });
        else p.reject(new Error(res.error));
      });
      worker.on('error', (e) => this.failSlot(slot, new TransformWorkerError(`transform worker failed: ${e.message}`)));
      worker.on('exit', (code) => { if (!this.closed) this.failSlot(slot, new TransformWorkerError(`transform worker exited with code ${code}`)); });
      // Referenced only while it has work, so an idle pool does not keep the process alive.
      worker.unref();
      this.slots.push(slot);
    }
  }

  get workers(): number {
    return this.slots.length;
  }

  private failSlot(slot: Slot, e: Error): void {
    this.broken ??= e;
    for (const [id, p] of this.pending) {
      if (p.slot === slot) { this.pending.delete(id); p.reject(e); }
    }
    slot.busy = 0;
    slot.worker.unref();
  }

  /** Decodes and transforms one encoded image; `randomKey` names its random stream (seed, epoch, sample id). */
  async run(bytes: Uint8Array, randomKey: Array<string | number>): Promise<TransformResult> {
    if (this.closed) throw new TransformWorkerError('transform pool is closed');
    if (this.broken) throw this.broken;
    if (this.slots.length === 0) {
      const t0 = performance.now();
      const r = await transformImage(bytes, this.transform, randomKey);
      return { pixels: r.pixels, flipped: r.flipped, seconds: (performance.now() - t0) / 1000 };
    }
    let slot = this.slots[0]!;
    for (const s of this.slots) if (s.busy < slot.busy) slot = s;
    const id = this.nextId++;
    // Copy into a transferable buffer of exactly the image's bytes (a tar entry may be a view into a larger one).
    const copy = new Uint8Array(bytes.byteLength);
    copy.set(bytes);
    const req: TransformRequest = { id, bytes: copy.buffer, options: this.transform, randomKey };
    if (slot.busy++ === 0) slot.worker.ref();
    return new Promise<TransformResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, slot });
      slot.worker.postMessage(req, [copy.buffer]);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const [id, p] of this.pending) { this.pending.delete(id); p.reject(new Error('transform pool closed')); }
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
