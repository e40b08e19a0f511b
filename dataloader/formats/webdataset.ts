/**
 * WebDataset tar shards as img2dataset writes them: consecutive entries sharing a key (`000000123.jpg`,
 * `000000123.txt`, `000000123.json`) form one sample. The key is the file name up to its first dot, with any
 * folder prefix kept (WebDataset's rule). A tar must end with its end-of-archive block (512 zero bytes): one cut
 * anywhere, even exactly between two members, is a truncated tar, and the sample at the cut is lost.
 */
import { createReadStream, createWriteStream, existsSync, openSync, readSync, closeSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { pack as tarPack, extract as tarExtract } from 'tar-stream';
import { once } from 'node:events';
import { oneLine } from '../errors';

/** One sample's files, by extension (`jpg`, `txt`, `json`, ...). */
export interface TarSample {
  key: string;
  /** 0-based position of the sample within the shard. */
  ordinal: number;
  files: Map<string, Buffer>;
}

/**
 * A tar that breaks off (truncated anywhere, or corrupt): the samples before `completeSamples` were read whole; the
 * sample at the break (`partialKey`, when one had started) and everything after it are lost.
 */
export class TarBreakError extends Error {
  override name = 'TarBreakError';
  constructor(
    readonly path: string,
    readonly completeSamples: number,
    readonly partialKey: string | undefined,
    readonly detail: string,
  ) {
    super(`${path}: ${detail}${partialKey !== undefined ? `; sample ${partialKey} at the break is incomplete` : ''}`);
  }
}

function splitName(name: string): { key: string; ext: string } {
  const slash = name.lastIndexOf('/');
  const dot = name.indexOf('.', slash + 1);
  if (dot < 0) return { key: name, ext: '' };
  return { key: name.slice(0, dot), ext: name.slice(dot + 1).toLowerCase() };
}

/** Whether the 512 bytes at `offset` of the file are an end-of-archive block (all zero). */
function endBlockAt(path: string, offset: number): boolean {
  const fd = openSync(path, 'r');
  try {
    const block = Buffer.alloc(512);
    const n = readSync(fd, block, 0, 512, offset);
    return n === 512 && block.every((x) => x === 0);
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads the samples of a tar shard in order. A tar that breaks off (truncated, corrupt, or missing its
 * end-of-archive block) ends the iteration with a TarBreakError after the complete samples before the break have
 * been yielded; the sample at the break is not yielded.
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
  // End of the last member's data (padded to 512): the end-of-archive block must follow it.
  let endOfMembers = 0;
  let lastMember = '';
  try {
    for await (const entry of extract) {
      const h = entry.header as typeof entry.header & { byteOffset?: number };
      lastMember = h.name;
      endOfMembers = (h.byteOffset ?? 0) + Math.ceil((h.size ?? 0) / 512) * 512;
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
  } catch (e) {
    // Past a whole end-of-archive block the archive is complete, whatever follows it (a half second block).
    if (!existsSync(path) || !endBlockAt(path, endOfMembers)) {
      throw new TarBreakError(path, ordinal, current?.key, `the tar breaks off (${oneLine((e as Error).message)})`);
    }
  } finally {
    source.destroy();
  }
  if (!endBlockAt(path, endOfMembers)) {
    const where = lastMember ? `after member ${lastMember}` : 'before its first member';
    throw new TarBreakError(path, ordinal, current?.key, `the tar ends ${where} without its end-of-archive block (cut between two members)`);
  }
  if (current) yield current;
}

/** What reading a whole shard without decoding found: samples read whole, and the break when the tar has one. */
export interface TarCount {
  samples: number;
  break?: TarBreakError;
}

/** Counts the samples (distinct consecutive keys) of a tar shard without decoding any image. */
export async function countTarSamples(path: string): Promise<TarCount> {
  let n = 0;
  try {
    for await (const _ of readTarSamples(path, () => false)) n++;
  } catch (e) {
    if (e instanceof TarBreakError) return { samples: e.completeSamples, break: e };
    throw e;
  }
  return { samples: n };
}

/**
 * The sample count img2dataset recorded for a shard (`00000_stats.json` beside `00000.tar`, key `successes`), or
 * undefined when there is none: how many samples a truncated shard had before it was cut.
 */
export function recordedSampleCount(tarPath: string): number | undefined {
  const stats = join(dirname(tarPath), `${basename(tarPath, '.tar')}_stats.json`);
  if (!existsSync(stats)) return undefined;
  try {
    const n = (JSON.parse(readFileSync(stats, 'utf8')) as { successes?: unknown }).successes;
    return Number.isInteger(n) && (n as number) >= 0 ? (n as number) : undefined;
  } catch {
    return undefined;
  }
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
