/**
 * Shard descriptors: the unit of work the coordinator publishes and trainers pull. A descriptor is
 * self-contained: a trainer with the data root mounted can read it without the index.
 */
import { isAbsolute } from 'node:path';
import { DATASET_FORMATS, type DatasetFormat } from './dataset-index';
import { DescriptorError } from './errors';

export interface ShardDescriptor {
  /** Wire-format version; 1. */
  v: 1;
  /** Unique within a job: `e<epoch>/<dataset>/<shard>#<start>-<end>`. Also the JetStream message id (dedup). */
  id: string;
  epoch: number;
  /** The job's seed; with epoch and sample id it seeds every random choice (crops, flips, caption choice). */
  seed: number;
  dataset: string;
  format: DatasetFormat;
  /** Shard file relative to the data root (the index folder; `..` allowed: an index may sit beside the data). */
  shard: string;
  /** Folder, relative to the data root, that manifest and COCO image paths are relative to. */
  imageRoot?: string;
  /** Sample range [start, end) as ordinals within the shard. */
  start: number;
  end: number;
  /** Position of this descriptor in the epoch's shuffled plan. */
  order: number;
}

export function descriptorId(d: Pick<ShardDescriptor, 'epoch' | 'dataset' | 'shard' | 'start' | 'end'>): string {
  return `e${d.epoch}/${d.dataset}/${d.shard}#${d.start}-${d.end}`;
}

/** Stable id of a sample, for the ledger: `<dataset>/<shard>/<key>`. */
export function sampleId(d: Pick<ShardDescriptor, 'dataset' | 'shard'>, key: string): string {
  return `${d.dataset}/${d.shard}/${key}`;
}

export function encodeDescriptor(d: ShardDescriptor): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(d));
}

const isNonNegInt = (x: unknown): x is number => Number.isInteger(x) && (x as number) >= 0;

/** Parses and checks a descriptor; a DescriptorError names the broken rule and quotes the value. */
export function parseDescriptor(data: Uint8Array | string): ShardDescriptor {
  const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
  let v: Partial<ShardDescriptor>;
  try {
    v = JSON.parse(text) as Partial<ShardDescriptor>;
  } catch (e) {
    throw new DescriptorError(`descriptor is not JSON (${(e as Error).message}): ${JSON.stringify(text.slice(0, 200))}`);
  }
  const fail = (rule: string): never => {
    throw new DescriptorError(`descriptor ${JSON.stringify(text.slice(0, 200))}: ${rule}`);
  };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('must be a JSON object');
  if (v.v !== 1) fail(`v must be 1, got ${JSON.stringify(v.v)}`);
  if (!isNonNegInt(v.epoch)) fail(`epoch must be a non-negative integer, got ${JSON.stringify(v.epoch)}`);
  if (!Number.isInteger(v.seed)) fail(`seed must be an integer, got ${JSON.stringify(v.seed)}`);
  if (typeof v.dataset !== 'string' || !/^[A-Za-z0-9._-]+$/.test(v.dataset)) fail(`dataset must be a name of [A-Za-z0-9._-], got ${JSON.stringify(v.dataset)}`);
  if (!DATASET_FORMATS.includes(v.format as DatasetFormat)) fail(`format must be one of ${DATASET_FORMATS.join(', ')}, got ${JSON.stringify(v.format)}`);
  // Relative to the data root (the index's folder), which an index written elsewhere may leave with `..`.
  if (typeof v.shard !== 'string' || v.shard === '' || isAbsolute(v.shard) || v.shard.includes('\0')) {
    fail(`shard must be a path relative to the data root, got ${JSON.stringify(v.shard)}`);
  }
  if (v.imageRoot !== undefined && (typeof v.imageRoot !== 'string' || isAbsolute(v.imageRoot) || v.imageRoot.includes('\0'))) {
    fail(`imageRoot must be a path relative to the data root, got ${JSON.stringify(v.imageRoot)}`);
  }
  if (!isNonNegInt(v.start) || !isNonNegInt(v.end) || v.end <= v.start) fail(`need integers 0 <= start < end, got start ${JSON.stringify(v.start)}, end ${JSON.stringify(v.end)}`);
  if (!isNonNegInt(v.order)) fail(`order must be a non-negative integer, got ${JSON.stringify(v.order)}`);
  const id = descriptorId(v as ShardDescriptor);
  if (v.id !== id) fail(`id must be ${JSON.stringify(id)}, got ${JSON.stringify(v.id)}`);
  return v as ShardDescriptor;
}
