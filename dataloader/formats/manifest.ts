/**
 * JSONL and CSV caption manifests. JSONL: one object a line, `{"image": "path", "caption": "..."}`, optionally
 * `"captions": [...]` (extra captions; one is chosen per epoch). CSV: a header row with an `image` column, a
 * `caption` column, and optionally more columns whose names start with `caption` (extra captions).
 * Image paths are relative to the dataset's image root. Sample key = the 0-based data line number.
 */
import { readFileSync } from 'node:fs';
import { parse as parseCsv } from 'csv-parse/sync';

/** One manifest row: the image path and its captions, or why the row is unusable. */
export type ManifestRow =
  | { ordinal: number; key: string; image: string; captions: string[] }
  | { ordinal: number; key: string; error: string };

const cache = new Map<string, ManifestRow[]>();

function parseJsonl(text: string): ManifestRow[] {
  const rows: ManifestRow[] = [];
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  lines.forEach((line, ordinal) => {
    const key = String(ordinal);
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      rows.push({ ordinal, key, error: `line ${ordinal + 1} is not JSON (${(e as Error).message}): ${JSON.stringify(line.slice(0, 120))}` });
      return;
    }
    const o = v as { image?: unknown; caption?: unknown; captions?: unknown };
    if (typeof v !== 'object' || v === null || typeof o.image !== 'string' || o.image === '') {
      rows.push({ ordinal, key, error: `line ${ordinal + 1} needs a string "image": ${JSON.stringify(line.slice(0, 120))}` });
      return;
    }
    const captions = [o.caption, ...(Array.isArray(o.captions) ? o.captions : [])].filter((c): c is string => typeof c === 'string');
    rows.push({ ordinal, key, image: o.image, captions });
  });
  return rows;
}

function parseCsvManifest(text: string, path: string): ManifestRow[] {
  const records = parseCsv(text, { relax_column_count: true, relax_quotes: true, skip_empty_lines: true }) as string[][];
  const header = records[0];
  if (!header) return [];
  const imageCol = header.indexOf('image');
  const captionCols = header.map((h, i) => (h.startsWith('caption') ? i : -1)).filter((i) => i >= 0);
  if (imageCol < 0) throw new Error(`${path}: CSV header needs an "image" column, got ${JSON.stringify(header)}`);
  return records.slice(1).map((r, ordinal): ManifestRow => {
    const key = String(ordinal);
    if (r.length !== header.length) {
      return { ordinal, key, error: `row ${ordinal + 1} has ${r.length} columns, the header has ${header.length}: ${JSON.stringify(r.join(',').slice(0, 120))}` };
    }
    const image = r[imageCol]!;
    if (!image) return { ordinal, key, error: `row ${ordinal + 1} has an empty "image"` };
    return { ordinal, key, image, captions: captionCols.map((i) => r[i]!).filter((c) => c !== '') };
  });
}

/** All rows of a manifest (parsed once per process and cached). */
export function readManifest(path: string, format: 'jsonl' | 'csv'): ManifestRow[] {
  let rows = cache.get(path);
  if (!rows) {
    const text = readFileSync(path, 'utf8');
    rows = format === 'jsonl' ? parseJsonl(text) : parseCsvManifest(text, path);
    if (cache.size > 8) cache.clear();
    cache.set(path, rows);
  }
  return rows;
}

export function countManifestSamples(path: string, format: 'jsonl' | 'csv'): number {
  return readManifest(path, format).length;
}
