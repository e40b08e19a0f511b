// BLIP-2's image transforms: torchvision's RandomResizedCrop parameters, train and eval transforms.
import sharp from 'sharp';
import { describe, expect, test } from 'vitest';
import { seededRandom } from './rng';
import { CLIP_MEAN, CLIP_STD, randomResizedCropParams, transformImage } from './transforms';

const solid = (w: number, h: number, rgb: [number, number, number], channels: 3 | 4 = 3) =>
  sharp({ create: { width: w, height: h, channels, background: { r: rgb[0], g: rgb[1], b: rgb[2], alpha: 1 } } }).png().toBuffer();

describe('randomResizedCropParams (torchvision RandomResizedCrop.get_params)', () => {
  test('crops lie inside the image with area in the scale range and ratio in range', () => {
    const rand = seededRandom('t', 1);
    for (let i = 0; i < 500; i++) {
      const c = randomResizedCropParams(300, 200, rand);
      expect(c.left).toBeGreaterThanOrEqual(0);
      expect(c.top).toBeGreaterThanOrEqual(0);
      expect(c.left + c.width).toBeLessThanOrEqual(300);
      expect(c.top + c.height).toBeLessThanOrEqual(200);
      const area = (c.width * c.height) / (300 * 200);
      // Rounding the sides moves the area a little around the [0.5, 1] range.
      expect(area).toBeGreaterThan(0.48);
      expect(area).toBeLessThanOrEqual(1);
      expect(c.width / c.height).toBeGreaterThan(0.74);
      expect(c.width / c.height).toBeLessThan(1.35);
    }
  });

  test('falls back to a centre crop at the nearest allowed ratio for an extreme image', () => {
    const c = randomResizedCropParams(1000, 10, () => 0.99);
    expect(c).toEqual({ left: Math.floor((1000 - 13) / 2), top: 0, width: 13, height: 10 });
  });
});

describe('transformImage', () => {
  test('eval: a solid image becomes (v/255 - mean)/std in every CHW position', async () => {
    const img = await solid(50, 30, [200, 100, 50]);
    const r = await transformImage(img, { mode: 'eval', imageSize: 16 });
    expect(r.pixels).toHaveLength(3 * 16 * 16);
    const want = [200, 100, 50].map((v, c) => (v / 255 - CLIP_MEAN[c]!) / CLIP_STD[c]!);
    for (let c = 0; c < 3; c++) {
      for (const p of [0, 17, 255]) expect(r.pixels[c * 256 + p]).toBeCloseTo(want[c]!, 4);
    }
  });

  test('train: a flip mirrors the image (left red, right blue becomes left blue)', async () => {
    const raw = Buffer.alloc(32 * 32 * 3);
    for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) raw.set(x < 16 ? [255, 0, 0] : [0, 0, 255], (y * 32 + x) * 3);
    const img = await sharp(raw, { raw: { width: 32, height: 32, channels: 3 } }).png().toBuffer();
    const opts = { mode: 'train' as const, imageSize: 32, scale: [1, 1] as const, ratio: [1, 1] as const };
    const flipped = await transformImage(img, { ...opts, flipProbability: 1 }, ['k']);
    const plain = await transformImage(img, { ...opts, flipProbability: 0 }, ['k']);
    expect(flipped.flipped).toBe(true);
    expect(plain.flipped).toBe(false);
    const redAt = (t: Float32Array, x: number) => t[5 * 32 + x]! > 1; // channel 0, row 5
    expect(redAt(plain.pixels, 2)).toBe(true);
    expect(redAt(plain.pixels, 29)).toBe(false);
    expect(redAt(flipped.pixels, 2)).toBe(false);
    expect(redAt(flipped.pixels, 29)).toBe(true);
  });

  test('train: the same random key gives the same crop and flip; other keys differ', async () => {
    const img = await solid(120, 80, [10, 20, 30]);
    const a = await transformImage(img, { imageSize: 16 }, [0, 0, 'x/1']);
    const b = await transformImage(img, { imageSize: 16 }, [0, 0, 'x/1']);
    expect(b.crop).toEqual(a.crop);
    expect(b.flipped).toBe(a.flipped);
    const crops = new Set<string>();
    for (let i = 0; i < 20; i++) crops.add(JSON.stringify((await transformImage(img, { imageSize: 16 }, [0, 0, `x/${i}`])).crop));
    expect(crops.size).toBeGreaterThan(10);
  });

  test('train with no crop (scale [1, 1]) and no flip (data.cropMinScale 1, data.flipProbability 0) is the eval transform, whatever the key', async () => {
    const img = await sharp({ create: { width: 40, height: 30, channels: 3, background: { r: 0, g: 0, b: 0 } } })
      .composite([{ input: { create: { width: 10, height: 30, channels: 3, background: { r: 200, g: 30, b: 30 } } }, left: 0, top: 0 }])
      .png().toBuffer();
    const ev = await transformImage(img, { mode: 'eval', imageSize: 16 });
    for (let i = 0; i < 8; i++) {
      const tr = await transformImage(img, { mode: 'train', imageSize: 16, scale: [1, 1], flipProbability: 0 }, [0, i, `x/${i}`]);
      expect(tr.flipped).toBe(false);
      expect(tr.crop).toEqual({ left: 0, top: 0, width: 40, height: 30 });
      expect(Array.from(tr.pixels)).toEqual(Array.from(ev.pixels));
    }
    // The default (LAVIS) augmentation crops and flips.
    const lavis = await Promise.all(Array.from({ length: 8 }, (_, i) => transformImage(img, { mode: 'train', imageSize: 16 }, [0, i, `x/${i}`])));
    expect(lavis.some((t) => t.flipped)).toBe(true);
    expect(lavis.some((t) => t.crop.width < 40 || t.crop.height < 30)).toBe(true);
  });

  test('greyscale and RGBA images come out as three channels', async () => {
    const grey = await sharp(Buffer.alloc(400, 128), { raw: { width: 20, height: 20, channels: 1 } }).toColourspace('b-w').png().toBuffer();
    expect((await sharp(grey).metadata()).channels).toBe(1);
    expect((await transformImage(grey, { mode: 'eval', imageSize: 8 })).pixels).toHaveLength(3 * 64);
    const rgba = await solid(20, 20, [1, 2, 3], 4);
    expect((await transformImage(rgba, { mode: 'eval', imageSize: 8 })).pixels).toHaveLength(3 * 64);
  });

  test('corrupt and truncated images are rejected', async () => {
    await expect(transformImage(new Uint8Array([1, 2, 3, 4]), { imageSize: 8 })).rejects.toThrow();
    const jpeg = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#123456' } }).jpeg().toBuffer();
    await expect(transformImage(jpeg.subarray(0, jpeg.length >> 1), { imageSize: 8 })).rejects.toThrow();
  });
});
