/**
 * WebDataset tar shards as img2dataset writes them: consecutive entries sharing a key (`000000123.jpg`,
 * `000000123.txt`, `000000123.json`) form one sample. The key is the file name up to its first dot, with any
 * folder prefix kept (WebDataset's rule).
 */
import { createReadStream } from 'node:fs';
import { pack as tarPack, extract as tarExtract } from 'tar-stream';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';

export const IMAGE_EXTENSIONS = ['jpg', 'jpeg', 'png', 'webp'] as const;

/** One sample's files, by extension (`jpg`, `txt`, `json`, ...). */
export interface TarSample {
  key: string;
  /** 0-based position of the sample within the shard. */
  ordinal: number;
  files: Map<string, Buffer>;
}

function splitName(name: string): { key: string; ext: string } {
  const slash = name.lastIndexOf('/');
  const dot = name.indexOf('.', slash + 1);
  if (dot < 0) return { key: name, ext: '' };
  return { key: name.slice(0, dot), ext: name.slice(dot + 1).toLowerCase() };
}

/**
 * Reads the samples of a tar shard in order. A truncated or malformed tar ends the iteration with the error (the
 * samples before it have been yielded); the partly read sample at the break is not yielded.
 * `loadBody(ordinal)` may return false to skip reading file bodies of samples before a cursor (they are drained).
 */
export async function* readTarSamples(
  path: string,
  loadBody: (ordinal: number) => boolean = () => true,
): AsyncGenerator<TarSample> {
  const extract = tarExtract();
  const source = createReadStream(path);
  source.on('error', (e) => extract.destroy(e));
  source.pipe(extract);
  let current: TarSample | undefined;
  let ordinal = 0;
  try {
    for await (const entry of extract) {
      const h = entry.header;
      if (h.type !== 'file') { entry.resume(); continue; }
      const { key, ext } = splitName(h.name);
      if (!current || current.key !== key) {
        if (current) { yield current; ordinal++; }
        current = { key, ordinal, files: new Map() };
      }
      if (loadBody(current.ordinal)) {
        const chunks: Buffer[] = [];
        for await (const c of entry) chunks.push(c as Buffer);
        current.files.set(ext, Buffer.concat(chunks));
      } else {
        entry.resume();
        await once(entry, 'end');
        current.files.set(ext, Buffer.alloc(0));
      }
    }
  } finally {
    source.destroy();
  }
  if (current) yield current;
}

/** Counts the samples (distinct consecutive keys) and bytes of a tar shard without decoding any image. */
export async function countTarSamples(path: string): Promise<number> {
  let n = 0;
  for await (const _ of readTarSamples(path, () => false)) n++;
  return n;
}

/** Writes a tar shard; `samples` gives each sample's files by extension, in order. */
export async function writeTarShard(
  path: string,
  samples: Iterable<{ key: string; files: Array<[string, Buffer]> }>,
): Promise<void> {
  const pack = tarPack();
  const out = createWriteStream(path);
  pack.pipe(out);
  const mtime = new Date(0);
  for (const s of samples) {
    for (const [ext, body] of s.files) {
      await new Promise<void>((resolve, reject) =>
        pack.entry({ name: `${s.key}.${ext}`, size: body.length, mtime, mode: 0o644 }, body, (e) => (e ? reject(e) : resolve())),
      );
    }
  }
  pack.finalize();
  await once(out, 'finish');
}
