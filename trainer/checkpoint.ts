/**
 * Training checkpoints: one directory per checkpoint, written by rank 0.
 *
 *   <root>/step-00000120/
 *     model.safetensors      trainable parameters, float32, under their checkpoint (Hugging Face) names
 *     optimizer.safetensors  AdamW moments: `exp_avg.<name>`, `exp_avg_sq.<name>`
 *     checkpoint.json        step, epoch, RNG state, data cursors, config hash, parent, optimiser step and options,
 *                            the size and sha256 of every other file, and its own sha256 (field `sha256`)
 *     ledger.json …          optional further files (`files`), checksummed the same way
 *
 * Writing: everything goes into a temporary sibling directory (`.step-…tmp-<pid>-<n>`), each file is fsynced, then
 * the directory is renamed into place and the root fsynced, so a reader never sees a half-written checkpoint.
 * Reading: `checkpoint.json` is checked against its own sha256, then every file's size and sha256 before any tensor
 * is used; a missing, truncated or corrupted file is refused with a `CheckpointError` naming the file.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { Blip2Error, parseSafetensors, serializeSafetensors, SafetensorsError, type SafeTensor } from '../common';
import type { AdamWState, ResolvedAdamWOptions } from './optim';

/**
 * A checkpoint that is missing, truncated, corrupted or does not belong to this job. It is never partly loaded:
 * the caller falls back to another checkpoint (or a fresh start) or stops with the message.
 */
export class CheckpointError extends Blip2Error {}

export const CHECKPOINT_FORMAT = 'blip2-dist-checkpoint/1';
export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const META_FILE = 'checkpoint.json';

/** A trainable parameter's value. */
export interface ParamValue {
  shape: number[];
  data: Float32Array;
}

/** Everything a checkpoint holds. */
export interface CheckpointState {
  /** Optimiser steps completed by the whole job (the global step). */
  step: number;
  /** Epoch being trained when the checkpoint was taken. */
  epoch: number;
  /** Steps completed within `epoch` (drives the per-epoch learning-rate schedule). */
  stepInEpoch: number;
  /** Trainable parameters by checkpoint name, in the order they are written. */
  params: Map<string, ParamValue>;
  /** AdamW state; its step count is stored in the JSON. */
  optimizer: AdamWState;
  /** The optimiser settings in force (informational; a resumed run uses its own config). */
  optimizerOptions?: ResolvedAdamWOptions;
  /** Random-number state (JSON-serialisable), e.g. `{ seed, … }`. */
  rng: Record<string, unknown>;
  /** Data cursors: shard key -> next sample index (partly consumed shards). */
  cursors: Record<string, number>;
  /** Shards fully consumed and contained in this checkpoint. */
  ackedShards: string[];
  /** Hash of the training configuration that produced the checkpoint. */
  configHash: string;
  /** Directory name of the checkpoint this run continued from, or null. */
  parent: string | null;
  /** Anything else the loop wants to keep (JSON). */
  extra?: Record<string, unknown>;
  /** Further files written into the checkpoint directory (checksummed like the tensors), e.g. `ledger.json`. */
  files?: Record<string, string>;
}

interface FileEntry {
  bytes: number;
  sha256: string;
}

/** The JSON written next to the tensors. */
export interface CheckpointMeta {
  format: typeof CHECKPOINT_FORMAT;
  step: number;
  epoch: number;
  stepInEpoch: number;
  optimizerStep: number;
  optimizerOptions: ResolvedAdamWOptions | null;
  params: { name: string; shape: number[] }[];
  rng: Record<string, unknown>;
  cursors: Record<string, number>;
  ackedShards: string[];
  configHash: string;
  parent: string | null;
  extra: Record<string, unknown>;
  createdAt: string;
  files: Record<string, FileEntry>;
  /** sha256 of this JSON serialised without the `sha256` field. */
  sha256: string;
}

export interface WriteCheckpointOptions {
  /** Directory name under the root. Default `step-<step, 8 digits>`; a name already taken gets `-1`, `-2`, … */
  name?: string;
}

const sha256 = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

function writeFileSynced(path: string, data: Uint8Array | string): void {
  const fd = openSync(path, 'w');
  try {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let off = 0;
    while (off < buf.byteLength) off += writeSync(fd, buf, off, buf.byteLength - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncDir(path: string): void {
  try {
    const fd = openSync(path, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Some file systems refuse fsync on directories; the rename is still atomic there.
  }
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

function metaDigest(meta: Omit<CheckpointMeta, 'sha256'>): string {
  return sha256(JSON.stringify(meta));
}

let tmpCounter = 0;

/**
 * Writes a checkpoint under `root` and returns its directory (absolute). Atomic: either the whole directory
 * appears under its final name or nothing does.
 */
export function writeCheckpoint(root: string, state: CheckpointState, options: WriteCheckpointOptions = {}): string {
  const absRoot = resolve(root);
  mkdirSync(absRoot, { recursive: true });
  const base = options.name ?? `step-${String(state.step).padStart(8, '0')}`;
  if (!/^[A-Za-z0-9._-]+$/.test(base) || base.startsWith('.')) {
    throw new CheckpointError(`checkpoint name "${base}" is invalid: letters, digits, '.', '_' and '-' only, not starting with '.'`);
  }
  const model = new Map<string, SafeTensor>();
  const optim = new Map<string, SafeTensor>();
  for (const [name, p] of state.params) {
    const m = state.optimizer.expAvg.get(name);
    const v = state.optimizer.expAvgSq.get(name);
    if (!m || !v) throw new CheckpointError(`checkpoint: optimizer moments of parameter ${name} are missing`);
    model.set(name, { dtype: 'F32', shape: p.shape, data: p.data });
    optim.set(`exp_avg.${name}`, { dtype: 'F32', shape: p.shape, data: m });
    optim.set(`exp_avg_sq.${name}`, { dtype: 'F32', shape: p.shape, data: v });
  }
  const modelBytes = serializeSafetensors(model, { format: 'pt' });
  const optimBytes = serializeSafetensors(optim, { format: 'pt' });
  const body: Omit<CheckpointMeta, 'sha256'> = {
    format: CHECKPOINT_FORMAT,
    step: state.step,
    epoch: state.epoch,
    stepInEpoch: state.stepInEpoch,
    optimizerStep: state.optimizer.step,
    optimizerOptions: state.optimizerOptions ?? null,
    params: [...state.params].map(([name, p]) => ({ name, shape: [...p.shape] })),
    rng: state.rng,
    cursors: state.cursors,
    ackedShards: state.ackedShards,
    configHash: state.configHash,
    parent: state.parent,
    extra: state.extra ?? {},
    createdAt: new Date().toISOString(),
    files: {
      [MODEL_FILE]: { bytes: modelBytes.byteLength, sha256: sha256(modelBytes) },
      [OPTIMIZER_FILE]: { bytes: optimBytes.byteLength, sha256: sha256(optimBytes) },
    },
  };
  const extraFiles = Object.entries(state.files ?? {});
  for (const [name, text] of extraFiles) {
    if (!/^[A-Za-z0-9._-]+$/.test(name) || [MODEL_FILE, OPTIMIZER_FILE, META_FILE].includes(name)) {
      throw new CheckpointError(`checkpoint file name "${name}" is invalid or reserved`);
    }
    body.files[name] = { bytes: Buffer.byteLength(text, 'utf8'), sha256: sha256(text) };
  }
  const meta: CheckpointMeta = { ...body, sha256: metaDigest(body) };

  const tmp = join(absRoot, `.${base}.tmp-${process.pid}-${++tmpCounter}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  try {
    writeFileSynced(join(tmp, MODEL_FILE), modelBytes);
    writeFileSynced(join(tmp, OPTIMIZER_FILE), optimBytes);
    for (const [name, text] of extraFiles) writeFileSynced(join(tmp, name), text);
    writeFileSynced(join(tmp, META_FILE), JSON.stringify(meta, null, 1) + '\n');
    fsyncDir(tmp);
    let name = base;
    for (let i = 1; exists(join(absRoot, name)); i++) name = `${base}-${i}`;
    const final = join(absRoot, name);
    renameSync(tmp, final);
    fsyncDir(absRoot);
    return final;
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}

function readVerified(dir: string, file: string, entry: FileEntry | undefined): Buffer {
  const path = join(dir, file);
  if (!entry) throw new CheckpointError(`${join(dir, META_FILE)}: no size and checksum recorded for ${file}`);
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new CheckpointError(`${path}: cannot read checkpoint file (${(err as Error).message})`, { cause: err });
  }
  if (bytes.byteLength !== entry.bytes) {
    throw new CheckpointError(
      `${path}: ${bytes.byteLength} bytes but the checkpoint recorded ${entry.bytes} (${bytes.byteLength < entry.bytes ? 'truncated' : 'extra bytes'}); refusing to load`,
    );
  }
  const got = sha256(bytes);
  if (got !== entry.sha256) throw new CheckpointError(`${path}: sha256 ${got} does not match the recorded ${entry.sha256} (corrupted); refusing to load`);
  return bytes;
}

/** Reads and verifies `checkpoint.json` alone (cheap: no tensors). */
export function readCheckpointMeta(dir: string): CheckpointMeta {
  const path = join(resolve(dir), META_FILE);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CheckpointError(`${path}: cannot read checkpoint metadata (${(err as Error).message})`, { cause: err });
  }
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(text) as CheckpointMeta;
  } catch (err) {
    throw new CheckpointError(`${path}: not valid JSON (${(err as Error).message}); truncated or corrupted, refusing to load`, { cause: err });
  }
  if (typeof meta !== 'object' || meta === null || meta.format !== CHECKPOINT_FORMAT) {
    throw new CheckpointError(`${path}: format ${JSON.stringify((meta as { format?: unknown } | null)?.format)} is not ${CHECKPOINT_FORMAT}`);
  }
  const { sha256: recorded, ...body } = meta;
  const got = metaDigest(body);
  if (got !== recorded) throw new CheckpointError(`${path}: sha256 ${got} does not match the recorded ${String(recorded)} (corrupted); refusing to load`);
  return meta;
}

export interface ReadCheckpointOptions {
  /** Refuse a checkpoint whose config hash differs (a different model or optimiser setup). */
  configHash?: string;
  /** Refuse a checkpoint that lacks one of these parameters or has another shape; extra parameters are refused too. */
  params?: readonly { name: string; shape: readonly number[] }[];
}

/** Reads a checkpoint directory, verifying every checksum and shape before returning anything. */
export function readCheckpoint(dir: string, options: ReadCheckpointOptions = {}): CheckpointState & { dir: string; meta: CheckpointMeta; files: Record<string, string> } {
  const abs = resolve(dir);
  const meta = readCheckpointMeta(abs);
  const metaPath = join(abs, META_FILE);
  if (options.configHash !== undefined && meta.configHash !== options.configHash) {
    throw new CheckpointError(`${metaPath}: config hash ${meta.configHash} differs from this job's ${options.configHash} (checkpoint of another configuration)`);
  }
  const modelBytes = readVerified(abs, MODEL_FILE, meta.files[MODEL_FILE]);
  const optimBytes = readVerified(abs, OPTIMIZER_FILE, meta.files[OPTIMIZER_FILE]);
  let model: Map<string, SafeTensor>, optim: Map<string, SafeTensor>;
  try {
    model = parseSafetensors(modelBytes, join(abs, MODEL_FILE)).tensors;
    optim = parseSafetensors(optimBytes, join(abs, OPTIMIZER_FILE)).tensors;
  } catch (err) {
    if (err instanceof SafetensorsError) throw new CheckpointError(err.message, { cause: err });
    throw err;
  }
  const float = (file: string, map: Map<string, SafeTensor>, key: string, shape: number[]): Float32Array => {
    const t = map.get(key);
    if (!t) throw new CheckpointError(`${join(abs, file)}: tensor ${key} is missing`);
    if (t.dtype !== 'F32') throw new CheckpointError(`${join(abs, file)}: tensor ${key} is ${t.dtype}, expected F32`);
    if (JSON.stringify(t.shape) !== JSON.stringify(shape)) {
      throw new CheckpointError(`${join(abs, file)}: tensor ${key} has shape [${t.shape.join(', ')}], the metadata says [${shape.join(', ')}]`);
    }
    return t.data as Float32Array;
  };
  if (options.params) {
    const have = new Map(meta.params.map((p) => [p.name, p.shape]));
    const missing = options.params.filter((p) => !have.has(p.name)).map((p) => p.name);
    const want = new Set(options.params.map((p) => p.name));
    const unexpected = meta.params.filter((p) => !want.has(p.name)).map((p) => p.name);
    const wrong = options.params
      .filter((p) => have.has(p.name) && JSON.stringify(have.get(p.name)) !== JSON.stringify([...p.shape]))
      .map((p) => `${p.name} [${have.get(p.name)!.join(', ')}] ≠ [${p.shape.join(', ')}]`);
    if (missing.length || unexpected.length || wrong.length) {
      throw new CheckpointError(
        `${metaPath}: parameters do not match this model:` +
          (missing.length ? ` missing ${missing.join(', ')};` : '') +
          (unexpected.length ? ` unexpected ${unexpected.join(', ')};` : '') +
          (wrong.length ? ` wrong shape ${wrong.join('; ')}` : ''),
      );
    }
  }
  const files: Record<string, string> = {};
  for (const name of Object.keys(meta.files)) {
    if (name !== MODEL_FILE && name !== OPTIMIZER_FILE) files[name] = readVerified(abs, name, meta.files[name]).toString('utf8');
  }
  const params = new Map<string, ParamValue>();
  const expAvg = new Map<string, Float32Array>();
  const expAvgSq = new Map<string, Float32Array>();
  for (const p of meta.params) {
    params.set(p.name, { shape: p.shape, data: float(MODEL_FILE, model, p.name, p.shape) });
    expAvg.set(p.name, float(OPTIMIZER_FILE, optim, `exp_avg.${p.name}`, p.shape));
    expAvgSq.set(p.name, float(OPTIMIZER_FILE, optim, `exp_avg_sq.${p.name}`, p.shape));
  }
  return {
    dir: abs,
    meta,
    step: meta.step,
    epoch: meta.epoch,
    stepInEpoch: meta.stepInEpoch,
    params,
    optimizer: { step: meta.optimizerStep, expAvg, expAvgSq },
    optimizerOptions: meta.optimizerOptions ?? undefined,
    rng: meta.rng,
    cursors: meta.cursors,
    ackedShards: meta.ackedShards,
    configHash: meta.configHash,
    parent: meta.parent,
    extra: meta.extra,
    files,
  };
}

/** The names in a directory, or none when it does not exist (yet). */
function entriesOrNone(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Checkpoint directories under `root` (complete ones only: temporary directories are skipped), oldest step first. */
export function listCheckpoints(root: string): { dir: string; step: number }[] {
  const abs = resolve(root);
  const names = entriesOrNone(abs);
  const out: { dir: string; step: number }[] = [];
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const dir = join(abs, name);
    try {
      const meta = JSON.parse(readFileSync(join(dir, META_FILE), 'utf8')) as Partial<CheckpointMeta>;
      if (meta.format === CHECKPOINT_FORMAT && typeof meta.step === 'number') out.push({ dir, step: meta.step });
    } catch {
      // not a checkpoint directory
    }
  }
  return out.sort((a, b) => a.step - b.step || a.dir.localeCompare(b.dir));
}

/**
 * Retention: keeps `keep` checkpoints (the committed `current` one and the newest older ones) and removes every
 * other checkpoint under `root` whose step is below `current`'s (older commits, and checkpoints whose commit was
 * refused). Newer directories are left alone. Returns the removed directories.
 */
export function pruneCheckpoints(root: string, current: string, keep: number): string[] {
  if (!Number.isInteger(keep) || keep < 1) throw new CheckpointError(`checkpoint retention: keep = ${keep} must be an integer ≥ 1`);
  const cur = resolve(current);
  const all = listCheckpoints(root);
  const mine = all.find((c) => c.dir === cur);
  if (!mine) return [];
  // Another directory of the same step was never committed (a refused proposal, or a step redone after a restore).
  const sameStep = all.filter((c) => c.dir !== cur && c.step === mine.step);
  const older = all.filter((c) => c.step < mine.step).sort((a, b) => b.step - a.step || b.dir.localeCompare(a.dir));
  const doomed = [...sameStep, ...older.slice(keep - 1)].map((c) => c.dir);
  for (const d of doomed) rmSync(d, { recursive: true, force: true });
  return doomed;
}

/** Removes temporary directories that a killed writer left under `root`. */
export function removeStaleTemporaries(root: string): string[] {
  const abs = resolve(root);
  const names = entriesOrNone(abs);
  const removed = names.filter((n) => n.startsWith('.') && n.includes('.tmp-')).map((n) => join(abs, n));
  for (const p of removed) rmSync(p, { recursive: true, force: true });
  return removed;
}

/** The name a checkpoint is referred to by in its child's `parent` field. */
export const checkpointName = (dir: string) => basename(dir);
/** The root directory a checkpoint sits in. */
export const checkpointRoot = (dir: string) => dirname(resolve(dir));
