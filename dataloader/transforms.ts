/**
 * BLIP-2's image transforms (LAVIS blip_processors.py `Blip2ImageTrainProcessor` / `BlipImageEvalProcessor`),
 * decoded with sharp (libvips):
 * - train: RandomResizedCrop(S, scale (0.5, 1.0), ratio (3/4, 4/3), bicubic) + RandomHorizontalFlip(0.5)
 *   + ToTensor + Normalize(CLIP mean, std);
 * - eval: Resize((S, S), bicubic) + ToTensor + Normalize.
 * Output: Float32Array in CHW layout [3, S, S]. The random choices come from a generator seeded by
 * (seed, epoch, sample id), so a resumed or redelivered shard gets the same crops.
 * sharp's `cubic` kernel is Catmull-Rom (a = -0.5), the kernel PIL's BICUBIC uses.
 */
import sharp from 'sharp';
import { randInt, seededRandom } from './rng';

export const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
export const CLIP_STD = [0.26862954, 0.26130258, 0.27577711] as const;

export interface TransformOptions {
  /** `train` (random crop + flip) or `eval` (resize). Default `train`. */
  mode?: 'train' | 'eval';
  /** Output side S in pixels. Default 224 (BLIP-2 pre-training). */
  imageSize?: number;
  /** RandomResizedCrop scale range, as fractions of the image area. Default [0.5, 1.0]. */
  scale?: readonly [number, number];
  /** RandomResizedCrop aspect-ratio range. Default [3/4, 4/3]. */
  ratio?: readonly [number, number];
  /** Horizontal flip probability in train mode. Default 0.5. */
  flipProbability?: number;
}

export interface CropBox {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** torchvision `RandomResizedCrop.get_params`: ten tries at a random area and aspect ratio, then a centre crop. */
export function randomResizedCropParams(
  width: number,
  height: number,
  rand: () => number,
  scale: readonly [number, number] = [0.5, 1.0],
  ratio: readonly [number, number] = [3 / 4, 4 / 3],
): CropBox {
  const area = width * height;
  const logRatio = [Math.log(ratio[0]), Math.log(ratio[1])];
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * (scale[0] + rand() * (scale[1] - scale[0]));
    const aspect = Math.exp(logRatio[0]! + rand() * (logRatio[1]! - logRatio[0]!));
    const w = Math.round(Math.sqrt(targetArea * aspect));
    const h = Math.round(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      return { top: randInt(rand, 0, height - h + 1), left: randInt(rand, 0, width - w + 1), width: w, height: h };
    }
  }
  const inRatio = width / height;
  let w: number, h: number;
  if (inRatio < ratio[0]) { w = width; h = Math.round(w / ratio[0]); }
  else if (inRatio > ratio[1]) { h = height; w = Math.round(h * ratio[1]); }
  else { w = width; h = height; }
  return { top: Math.floor((height - h) / 2), left: Math.floor((width - w) / 2), width: w, height: h };
}

/** Packed RGB bytes [S, S, 3] -> normalised Float32Array [3, S, S]. */
export function normalizeToChw(rgb: Uint8Array, side: number, out = new Float32Array(3 * side * side)): Float32Array {
  const plane = side * side;
  const scale = [1 / (255 * CLIP_STD[0]), 1 / (255 * CLIP_STD[1]), 1 / (255 * CLIP_STD[2])];
  const shift = [CLIP_MEAN[0] / CLIP_STD[0], CLIP_MEAN[1] / CLIP_STD[1], CLIP_MEAN[2] / CLIP_STD[2]];
  for (let p = 0, q = 0; p < plane; p++, q += 3) {
    out[p] = rgb[q]! * scale[0]! - shift[0]!;
    out[plane + p] = rgb[q + 1]! * scale[1]! - shift[1]!;
    out[2 * plane + p] = rgb[q + 2]! * scale[2]! - shift[2]!;
  }
  return out;
}

export interface TransformedImage {
  /** [3, S, S] */
  pixels: Float32Array;
  /** Source image width and height. */
  width: number;
  height: number;
  crop: CropBox;
  flipped: boolean;
}

/**
 * Decodes one encoded image (JPEG, PNG, WebP, ...) and applies the transform. Throws on an image that does not
 * decode (sharp fails on truncated or corrupt data: `failOn: 'warning'`).
 * `randomKey` names the sample's random stream, e.g. [seed, epoch, sampleId].
 */
export async function transformImage(
  bytes: Uint8Array,
  options: TransformOptions = {},
  randomKey: ReadonlyArray<string | number> = [],
): Promise<TransformedImage> {
  const mode = options.mode ?? 'train';
  const side = options.imageSize ?? 224;
  const input = sharp(bytes, { failOn: 'warning' });
  const meta = await input.metadata();
  const width = meta.width, height = meta.height;
  if (!width || !height) throw new Error('image has no dimensions');
  let crop: CropBox = { left: 0, top: 0, width, height };
  let flipped = false;
  let pipeline = input.toColourspace('srgb').removeAlpha();
  if (mode === 'train') {
    const rand = seededRandom('transform', ...randomKey);
    // A lower scale of 1 is no crop at all (data.cropMinScale 1): the whole image, as in eval mode.
    if ((options.scale?.[0] ?? 0.5) < 1) {
      crop = randomResizedCropParams(width, height, rand, options.scale, options.ratio);
      pipeline = pipeline.extract(crop);
    }
    flipped = rand() < (options.flipProbability ?? 0.5);
  }
  pipeline = pipeline.resize(side, side, { kernel: 'cubic', fit: 'fill' });
  if (flipped) pipeline = pipeline.flop();
  const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 || info.width !== side || info.height !== side) {
    throw new Error(`decoded to ${info.width}x${info.height}x${info.channels}, expected ${side}x${side}x3`);
  }
  return { pixels: normalizeToChw(data, side), width, height, crop, flipped };
}

/** The benchmark's baseline: decode to raw RGB with no crop, resize or normalisation. */
export async function decodeOnly(bytes: Uint8Array): Promise<number> {
  const { info } = await sharp(bytes, { failOn: 'warning' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return info.width * info.height;
}
