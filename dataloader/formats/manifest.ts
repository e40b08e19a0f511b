/**
 * Caption manifests: one row per sample, an image path (relative to the dataset's image root) and its captions.
 * - JSONL: one object a line, `{"image": "path", "caption": "..." | [...], "captions": [...]}`; blank lines are
 *   ignored (messages give the file's own line numbers).
 * - CSV: a header row naming an image column (`image`, `image_path`, `filepath`, `file_name`, `file` or `path`) and
 *   caption columns (`caption`, `text`, and any other whose name starts with `caption`).
 * - JSON array (LAVIS's `coco_karpathy_{train,val,test}.json` and its other caption annotations):
 *   `[{"image": "path", "caption": "..." | [...]}, ...]`.
 * When a row has several captions, one is chosen per epoch. Sample key = the row's 0-based position among the data
 * rows (blank lines and the CSV header not counted).
 */
import { readFileSync } from 'node:fs';
import { parse as parseCsv } from 'csv-parse/sync';
import { DatasetError, oneLine } from '../errors';

export type ManifestFormat = 'jsonl' | 'csv' | 'json';

/** One manifest row: the image path and its captions, or why the row is unusable. */
export type ManifestRow =
  | { ordinal: number; key: string; image: string; captions: string[] }
  | { ordinal: number; key: string; error: string };

const cache = new Map<string, ManifestRow[]>();
const quote = (text: string) => JSON.stringify(text.length > 120 ? text.slice(0, 120) + '…' : text);

/** The captions of an object's `caption` (string or list) and `captions` (list); non-strings are dropped. */
function captionsOf(o: { caption?: unknown; captions?: unknown }): string[] {
  const list = (v: unknown) => (Array.isArray(v) ? v : v === undefined ? [] : [v]);
  return [...list(o.caption), ...list(o.captions)].filter((c): c is string => typeof c === 'string');
}

function rowOf(v: unknown, ordinal: number, where: string, text: string): ManifestRow {
  const key = String(ordinal);
  const o = v as { image?: unknown; caption?: unknown; captions?: unknown };
  if (typeof v !== 'object' || v === null || Array.isArray(v) || typeof o.image !== 'string' || o.image === '') {
    return { ordinal, key, error: `${where} needs a string "image": ${quote(text)}` };
  }
  return { ordinal, key, image: o.image, captions: captionsOf(o) };
}

function parseJsonl(text: string): ManifestRow[] {
  const rows: ManifestRow[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const ordinal = rows.length;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      rows.push({ ordinal, key: String(ordinal), error: `line ${i + 1} is not JSON (${oneLine((e as Error).message)}): ${quote(line)}` });
      return;
    }
    rows.push(rowOf(v, ordinal, `line ${i + 1}`, line));
  });
  return rows;
}

const IMAGE_COLUMNS = ['image', 'image_path', 'filepath', 'file_name', 'file', 'path'];

function parseCsvManifest(text: string, path: string): ManifestRow[] {
  let records: string[][];
  try {
    records = parseCsv(text.replace(/^\uFEFF/, ''), { relax_column_count: true, relax_quotes: true, skip_empty_lines: true }) as string[][];
  } catch (e) {
    throw new DatasetError(`${path}: not a readable CSV file (${oneLine((e as Error).message)})`);
  }
  const header = records[0]?.map((h) => h.trim().toLowerCase());
  if (!header) return [];
  const imageCol = IMAGE_COLUMNS.map((n) => header.indexOf(n)).find((i) => i >= 0) ?? -1;
  const captionCols = header.map((h, i) => (h.startsWith('caption') || h === 'text' ? i : -1)).filter((i) => i >= 0);
  if (imageCol < 0 || captionCols.length === 0) {
    throw new DatasetError(
      `${path}: the CSV header needs an image column (${IMAGE_COLUMNS.join(', ')}) and a caption column (caption, caption_*, text); ` +
        `its first row is ${quote(records[0]!.join(','))}`,
    );
  }
  return records.slice(1).map((r, ordinal): ManifestRow => {
    const key = String(ordinal);
    const where = `row ${ordinal + 1} (after the header)`;
    if (r.length !== header.length) {
      return { ordinal, key, error: `${where} has ${r.length} columns, the header has ${header.length}: ${quote(r.join(','))}` };
    }
    const image = r[imageCol]!.trim();
    if (!image) return { ordinal, key, error: `${where} has an empty "${header[imageCol]}"` };
    return { ordinal, key, image, captions: captionCols.map((i) => r[i]!).filter((c) => c !== '') };
  });
}

function parseJsonArray(text: string, path: string): ManifestRow[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new DatasetError(`${path}: not valid JSON (${oneLine((e as Error).message)}); is the file truncated?`);
  }
  if (!Array.isArray(v)) throw new DatasetError(`${path}: a caption annotation file must hold a JSON array of {"image", "caption"} objects`);
  return v.map((item, ordinal) => rowOf(item, ordinal, `entry ${ordinal}`, JSON.stringify(item) ?? String(item)));
}

/** All rows of a manifest (parsed once per process and cached). A file that cannot be read at all throws DatasetError. */
export function readManifest(path: string, format: ManifestFormat): ManifestRow[] {
  let rows = cache.get(path);
  if (!rows) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new DatasetError(`${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    rows = format === 'jsonl' ? parseJsonl(text) : format === 'csv' ? parseCsvManifest(text, path) : parseJsonArray(text, path);
    if (cache.size > 8) cache.clear();
    cache.set(path, rows);
  }
  return rows;
}

export function countManifestSamples(path: string, format: ManifestFormat): number {
  return readManifest(path, format).length;
}
