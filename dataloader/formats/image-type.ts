/**
 * Which image format a file holds, told from its first bytes (not its name), and whether sharp (libvips) decodes it.
 * WebDataset samples name their image by extension only by convention: a `.gif` or a `.png` holding JPEG data is
 * still an image, and a sample's image is found by content.
 */
import sharp from 'sharp';

/** Image formats told apart by their signature. */
export type ImageFormat = 'jpeg' | 'png' | 'gif' | 'webp' | 'tiff' | 'heif' | 'avif' | 'bmp' | 'svg' | 'jp2' | 'jxl';

/** Extensions that name an image file (lower case, no dot); a file with one counts as an image even when corrupt. */
export const IMAGE_EXTENSIONS: readonly string[] = [
  'jpg', 'jpeg', 'jpe', 'png', 'gif', 'webp', 'tif', 'tiff', 'heic', 'heif', 'avif', 'bmp', 'svg', 'jp2', 'jxl',
];

const ascii = (b: Uint8Array, from: number, to: number) => Buffer.from(b.subarray(from, to)).toString('latin1');

/** The format of `bytes` by signature, or undefined when it is not an image this module knows. */
export function sniffImageFormat(bytes: Uint8Array): ImageFormat | undefined {
  const b = bytes;
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && ascii(b, 0, 8) === '\x89PNG\r\n\x1a\n') return 'png';
  if (b.length >= 6 && (ascii(b, 0, 6) === 'GIF87a' || ascii(b, 0, 6) === 'GIF89a')) return 'gif';
  if (b.length >= 12 && ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 12) === 'WEBP') return 'webp';
  if (b.length >= 4 && (ascii(b, 0, 4) === 'II*\0' || ascii(b, 0, 4) === 'MM\0*')) return 'tiff';
  if (b.length >= 12 && ascii(b, 4, 8) === 'ftyp') {
    const brand = ascii(b, 8, 12);
    if (brand === 'avif' || brand === 'avis') return 'avif';
    if (['heic', 'heix', 'hevc', 'hevx', 'mif1', 'msf1'].includes(brand)) return 'heif';
  }
  if (b.length >= 12 && ascii(b, 4, 12) === 'jP  \r\n\x87\n') return 'jp2';
  if (b.length >= 2 && b[0] === 0xff && b[1] === 0x0a) return 'jxl';
  if (b.length >= 12 && ascii(b, 4, 12) === 'JXL \r\n\x87\n') return 'jxl';
  // BMP: "BM" and the file size (little-endian) in bytes 2-5; captions that start with "BM" do not match.
  if (b.length >= 26 && b[0] === 0x42 && b[1] === 0x4d && Buffer.from(b.subarray(2, 6)).readUInt32LE(0) === b.length) return 'bmp';
  const head = ascii(b, 0, Math.min(b.length, 512)).trimStart().toLowerCase();
  if (head.startsWith('<svg') || (head.startsWith('<?xml') && head.includes('<svg'))) return 'svg';
  return undefined;
}

/** Whether this build of sharp decodes `format` (heif covers avif; jp2 and jxl only in builds with them). */
export function sharpDecodes(format: ImageFormat): boolean {
  const f = sharp.format as unknown as Record<string, { input?: { buffer?: boolean } } | undefined>;
  const name = format === 'avif' ? 'heif' : format === 'jp2' ? 'jp2k' : format;
  return f[name]?.input?.buffer === true;
}
