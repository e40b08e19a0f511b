/**
 * `npm run bench:data`: data-path throughput, each figure against a baseline measured in the same run.
 *
 * 1. Decode + BLIP-2 train transform (224², CHW float32), images per second per worker, vs raw decode of the same
 *    bytes (sharp to RGB, no crop/resize/normalise) on one thread; for the synthetic shards' JPEGs, 224×224
 *    photo-like (noisy) JPEGs, and 640×480 JPEGs (COCO-sized).
 * 2. The whole batch stream (tar read, workers, prefetch queue, tokenizer, batches of 8) over synthetic shards,
 *    images per second with 1 and 2 workers, vs the same raw-decode baseline.
 * 3. Descriptors per second through JetStream (publish with a window of acks; lease + ackAck one at a time), vs
 *    core NATS publish of the same payloads.
 * 4. Whether the pipeline keeps up with N trainers at the `small` preset (batch 8, step 0.3–0.6 s).
 *
 * Flags: --quick (fewer images/descriptors), --trainers N (default 4), --step-seconds a,b (default 0.3,0.6).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import sharp from 'sharp';
import { setLogLevel } from '../../common';
import { startNatsServer } from '../../test/setup/nats';
import { createBatchStream, localShardSource } from '../batch-stream';
import { loadIndex } from '../dataset-index';
import { readTarSamples } from '../formats/webdataset';
import { ShardConsumer, ShardPublisher } from '../jetstream';
import { planEpoch } from '../plan';
import { writeSynthDataset } from '../synth';
import { CaptionTokenizer } from '../tokenizer';
import { decodeOnly } from '../transforms';
import { TransformPool } from '../workers/pool';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const flag = (name: string, dflt: string) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1]! : dflt; };
const trainers = Number(flag('--trainers', '4'));
const stepSeconds = flag('--step-seconds', '0.3,0.6').split(',').map(Number);
const SIDE = 224;
const BATCH = 8;
setLogLevel('error');
sharp.concurrency(1);

const fmt = (x: number, d = 1) => x.toFixed(d).padStart(9);
const rows: string[] = [];
const row = (what: string, value: number, unit: string, base: number) =>
  rows.push(`${what.padEnd(66)} ${fmt(value)} ${unit.padEnd(12)} ${fmt(value / base, 2)}×`);

async function timeIt(n: number, f: (i: number) => Promise<unknown>, concurrency = 1): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => { while (next < n) await f(next++); }));
  return n / ((performance.now() - t0) / 1000);
}

async function noisyJpeg(w: number, h: number, seed: number): Promise<Buffer> {
  // Smooth gradients plus noise: more entropy than the synthetic shapes, like a photograph.
  const raw = Buffer.alloc(w * h * 3);
  let s = seed * 2654435761 >>> 0;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    raw[(y * w + x) * 3 + c] = ((x * (c + 1) + y * (3 - c)) % 256 + (s >>> 26)) & 255;
  }
  return sharp(raw, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
}

async function imageBench(label: string, images: Buffer[]): Promise<number> {
  const n = images.length;
  await timeIt(Math.min(n, 20), (i) => decodeOnly(images[i]!)); // warm-up
  const base = await timeIt(n, (i) => decodeOnly(images[i % n]!));
  row(`${label}: raw decode, 1 thread (baseline)`, base, 'images/s', base);
  for (const workers of [1, 2]) {
    const pool = new TransformPool({ workers, transform: { mode: 'train', imageSize: SIDE } });
    await timeIt(8, (i) => pool.run(images[i % n]!, [0, 0, `warm${i}`]), 4 * workers);
    const rate = await timeIt(n, (i) => pool.run(images[i % n]!, [0, 0, `k${i}`]), 4 * workers);
    await pool.close();
    row(`${label}: decode+train transform, ${workers} worker(s), per worker`, rate / workers, 'images/s', base);
  }
  return base;
}

const root = mkdtempSync(join(tmpdir(), 'blip2-bench-'));
try {
  const samples = quick ? 220 : 660;
  await writeSynthDataset({ out: root, samples, shardSize: 100, imageSize: SIDE, seed: 0 });
  const index = loadIndex(join(root, 'index.json'));
  const synthJpegs: Buffer[] = [];
  for await (const s of readTarSamples(join(root, index.datasets[0]!.shards[0]!.path))) synthJpegs.push(s.files.get('jpg')!);

  const nImg = quick ? 100 : 300;
  const synthBase = await imageBench(`synthetic ${SIDE}² JPEG`, synthJpegs.slice(0, nImg));
  const photo224 = await Promise.all(Array.from({ length: Math.min(nImg, 100) }, (_, i) => noisyJpeg(224, 224, i)));
  await imageBench('photo-like 224² JPEG', photo224);
  const photo640 = await Promise.all(Array.from({ length: quick ? 30 : 60 }, (_, i) => noisyJpeg(640, 480, i)));
  await imageBench('photo-like 640×480 JPEG', photo640);

  // The whole pipeline over the synthetic train shards.
  const tokenizer = CaptionTokenizer.fromFile(join(root, 'tokenizer.json'));
  const pipeline: Record<number, number> = {};
  for (const workers of [1, 2]) {
    const stream = createBatchStream({
      source: localShardSource(planEpoch({ index, epoch: workers, seed: 0 })), dataRoot: root, tokenizer, batchSize: BATCH, workers,
      transform: { mode: 'train', imageSize: SIDE },
    });
    const t0 = performance.now();
    let count = 0;
    for await (const b of stream) count += b.batchSize;
    pipeline[workers] = count / ((performance.now() - t0) / 1000);
    row(`batch stream (tar+decode+transform+tokenize), ${workers} worker(s)`, pipeline[workers]!, 'images/s', synthBase);
  }

  // JetStream descriptors.
  const server = await startNatsServer();
  try {
    const nc = await connect({ servers: server.url });
    const many = { ...index, datasets: [{ ...index.datasets[0]!, shards: Array.from({ length: quick ? 2000 : 10000 }, (_, i) => ({ path: `train/${i}.tar`, samples: 10000, bytes: 1 })) }] };
    const descs = planEpoch({ index: many, epoch: 0, seed: 0 });
    const payloads = descs.map((d) => new TextEncoder().encode(JSON.stringify(d)));
    let t0 = performance.now();
    for (const p of payloads) nc.publish('bench.core', p);
    await nc.flush();
    const core = payloads.length / ((performance.now() - t0) / 1000);
    row('core NATS publish, same payloads (baseline)', core, 'msgs/s', core);
    const pub = new ShardPublisher({ nc, stream: 'BENCH', subject: 'bench.shards', ackWaitMs: 60_000 });
    await pub.ensureStream();
    t0 = performance.now();
    await pub.publishEpoch(descs);
    row('JetStream publishEpoch (window 256, msg-id dedup)', descs.length / ((performance.now() - t0) / 1000), 'descriptors/s', core);
    const consumer = new ShardConsumer({ nc, stream: 'BENCH', subject: 'bench.shards', ackWaitMs: 60_000 });
    const nLease = quick ? 500 : 2000;
    t0 = performance.now();
    for (let i = 0; i < nLease; i++) await (await consumer.next())!.ack();
    row('JetStream lease + ackAck, one at a time (a trainer)', nLease / ((performance.now() - t0) / 1000), 'descriptors/s', core);
    consumer.close();
    await nc.close();
  } finally {
    await server.stop();
  }

  process.stdout.write(`\nblip2 bench:data — ${cpus().length} CPU(s) ${cpus()[0]?.model ?? ''}, Node ${process.version}, sharp ${sharp.versions.sharp}\n`);
  process.stdout.write(`${'figure'.padEnd(66)} ${'value'.padStart(9)} ${'unit'.padEnd(12)} ${'vs base'.padStart(10)}\n`);
  for (const r of rows) process.stdout.write(r + '\n');

  process.stdout.write(`\nkeeping up with ${trainers} trainers at the small preset (batch ${BATCH}, ${SIDE}² images):\n`);
  for (const s of stepSeconds) {
    const need = (trainers * BATCH) / s;
    const best = Math.max(pipeline[1]!, pipeline[2]!);
    const coreShare = need / pipeline[1]!;
    process.stdout.write(
      `  step ${s} s: need ${need.toFixed(0)} images/s; pipeline gives ${best.toFixed(0)} images/s ` +
        `(${(best / need).toFixed(1)}× the need) -> ${best >= need ? 'keeps up' : 'FALLS BEHIND'}; ` +
        `it costs ≈ ${(coreShare * 100).toFixed(0)}% of one core in total (${((coreShare * 100) / trainers).toFixed(0)}% per trainer)\n`,
    );
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}
