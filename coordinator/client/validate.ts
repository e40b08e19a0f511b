/**
 * Schemas of every message on the job's NATS subjects and of the job state in KV, checked by hand-written
 * validators (no schema package): a message is parsed, then every field the reader uses is checked for presence,
 * type and range. The readers (coordinator, membership client, launcher) drop or answer a message that fails, with
 * the reason (`not-json`, `schema`) and the first broken rule; nothing downstream ever sees an unchecked value.
 */
import type { CommitInfo, JobState, MemberRecord, PeerInfo } from './types';
import type { ControlReply, ControlRequest, Heartbeat, ProgressReport } from './wire';

/** Why a message was refused: it is not JSON, or it breaks the schema. */
export type MessageFault = 'not-json' | 'schema';

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: MessageFault; message: string };

/** A broken rule, with the path of the field (`commit.cursors["a"]`). */
class SchemaViolation extends Error {}

type Check<T> = (v: unknown, path: string) => T;

const fail = (path: string, rule: string, v: unknown): never => {
  let shown: string;
  try {
    shown = v === undefined ? 'missing' : JSON.stringify(v)?.slice(0, 80) ?? String(v);
  } catch {
    shown = typeof v;
  }
  throw new SchemaViolation(`${path}: ${rule}, got ${shown}`);
};

const str = (o: { nonEmpty?: boolean; max?: number } = {}): Check<string> => (v, path) => {
  if (typeof v !== 'string') return fail(path, 'must be a string', v);
  if (o.nonEmpty && v === '') return fail(path, 'must not be empty', v);
  if (v.length > (o.max ?? 4096)) return fail(path, `must be at most ${o.max ?? 4096} characters`, v.length);
  return v;
};
const int = (min = 0): Check<number> => (v, path) =>
  Number.isSafeInteger(v) && (v as number) >= min ? (v as number) : fail(path, `must be an integer >= ${min}`, v);
const finite: Check<number> = (v, path) => (typeof v === 'number' && Number.isFinite(v) ? v : fail(path, 'must be a finite number', v));
const bool: Check<boolean> = (v, path) => (typeof v === 'boolean' ? v : fail(path, 'must be true or false', v));
const oneOf = <T extends string>(values: readonly T[]): Check<T> => (v, path) =>
  values.includes(v as T) ? (v as T) : fail(path, `must be one of ${values.join(', ')}`, v);
const optional = <T>(c: Check<T>): Check<T | undefined> => (v, path) => (v === undefined ? undefined : c(v, path));
const nullable = <T>(c: Check<T>): Check<T | null> => (v, path) => (v === null ? null : c(v, path));
const array = <T>(c: Check<T>, max = 1_000_000): Check<T[]> => (v, path) => {
  if (!Array.isArray(v)) return fail(path, 'must be an array', v);
  if (v.length > max) return fail(path, `must have at most ${max} entries`, v.length);
  return v.map((x, i) => c(x, `${path}[${i}]`));
};
const record = <T>(c: Check<T>): Check<Record<string, T>> => (v, path) => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(path, 'must be an object', v);
  const out: Record<string, T> = {};
  for (const [k, x] of Object.entries(v)) out[k] = c(x, `${path}[${JSON.stringify(k)}]`);
  return out;
};
const literal = <T extends string | number | boolean>(value: T): Check<T> => (v, path) =>
  v === value ? value : fail(path, `must be ${JSON.stringify(value)}`, v);
type Shape = Record<string, Check<unknown>>;
type Out<S extends Shape> = { [K in keyof S]: ReturnType<S[K]> };
/**
 * An object with these fields. Fields the schema does not name are kept as they are (a newer writer's additions
 * survive a read-modify-write of the job state) but are never read by this side.
 */
const object = <S extends Shape>(shape: S): Check<Out<S>> => (v, path) => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(path || 'message', 'must be a JSON object', v);
  for (const [k, c] of Object.entries(shape)) c((v as Record<string, unknown>)[k], path ? `${path}.${k}` : k);
  return v as Out<S>;
};

const nodeId = str({ nonEmpty: true, max: 253 });
const token = str({ max: 4096 });
const commitInfo: Check<CommitInfo> = object({
  step: int(0), epoch: int(0), checkpointDir: str({ nonEmpty: true }), cursors: record(int(0)),
  ackedShards: array(str({ nonEmpty: true })), samples: optional(int(0)),
});

const controlSchemas: Record<ControlRequest['type'], Check<ControlRequest>> = {
  join: object({ type: literal('join'), token, nodeId, address: str({ nonEmpty: true, max: 300 }), incarnation: str({ nonEmpty: true, max: 128 }) }),
  leave: object({ type: literal('leave'), token, nodeId, incarnation: optional(str({ max: 128 })) }),
  failure: object({
    type: literal('failure'), token, nodeId, generation: int(0), missingRank: optional(int(0)), op: optional(str({ max: 200 })),
    message: str({ max: 4096 }),
  }),
  commit: object({ type: literal('commit'), token, nodeId, generation: int(0), commit: commitInfo }),
  epochDone: object({ type: literal('epochDone'), token, nodeId, generation: int(0), epoch: int(0) }),
  stop: object({ type: literal('stop'), token, nodeId }),
};
export const CONTROL_TYPES = Object.keys(controlSchemas) as ControlRequest['type'][];

const heartbeatSchema: Check<Heartbeat> = object({ token, nodeId, address: str({ nonEmpty: true, max: 300 }), incarnation: str({ nonEmpty: true, max: 128 }) });

const progressSchema: Check<ProgressReport> = object({
  nodeId, generation: int(0), step: int(0), epoch: int(0), losses: record(finite), samples: int(0), samplesPerSec: finite, time: finite,
});

const replySchema: Check<ControlReply> = (v, path) => {
  const { ok } = object({ ok: bool })(v, path);
  if (ok) return v as ControlReply;
  return object({ ok: literal(false), code: oneOf(['auth', 'refused', 'bad-request'] as const), message: str() })(v, path);
};

const peer: Check<PeerInfo> = object({ rank: int(0), nodeId, address: str({ nonEmpty: true, max: 300 }) });
const member: Check<MemberRecord> = object({ nodeId, address: str({ nonEmpty: true, max: 300 }), incarnation: str({ nonEmpty: true, max: 128 }), joinSeq: int(0) });
const jobStateSchema: Check<JobState> = object({
  version: literal(1),
  jobId: str({ nonEmpty: true }),
  status: oneOf(['waiting', 'running', 'finished'] as const),
  generation: int(0),
  members: array(member),
  world: array(peer),
  epoch: int(0),
  publishedEpoch: int(-1),
  epochShards: int(0),
  queueGeneration: int(0),
  committed: nullable(commitInfo),
  ledger: object({ commits: int(0), samplesCommitted: int(0), shardsAcked: int(0) }),
  pendingJoin: bool,
  readySince: nullable(finite),
  nextJoinSeq: int(0),
  reason: str({ max: 100_000 }),
});

function checkValue<T>(check: Check<T>, v: unknown): Parsed<T> {
  try {
    return { ok: true, value: check(v, '') };
  } catch (e) {
    if (e instanceof SchemaViolation) return { ok: false, reason: 'schema', message: e.message };
    throw e;
  }
}

function parseWith<T>(check: Check<T>, data: Uint8Array | string): Parsed<T> {
  const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { ok: false, reason: 'not-json', message: `not JSON (${(e as Error).message}): ${JSON.stringify(text.slice(0, 80))}` };
  }
  return checkValue(check, v);
}

/** The first step of a control request: a JSON object whose token can be checked (before the full schema). */
export function parseControlEnvelope(data: Uint8Array | string): Parsed<{ type: unknown; token: unknown; nodeId: unknown; raw: Record<string, unknown> }> {
  const r = parseWith<Record<string, unknown>>((v, path) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(path || 'message', 'must be a JSON object', v);
    return v as Record<string, unknown>;
  }, data);
  return r.ok ? { ok: true, value: { type: r.value.type, token: r.value.token, nodeId: r.value.nodeId, raw: r.value } } : r;
}

/** A control request's fields, by its type (an unknown type breaks the schema). */
export function checkControlRequest(raw: Record<string, unknown>): Parsed<ControlRequest> {
  const schema = controlSchemas[raw.type as ControlRequest['type']];
  if (!schema || !Object.hasOwn(controlSchemas, raw.type as string)) {
    return { ok: false, reason: 'schema', message: `type: must be one of ${CONTROL_TYPES.join(', ')}, got ${JSON.stringify(raw.type)?.slice(0, 80) ?? 'missing'}` };
  }
  return checkValue(schema, raw);
}

export const parseControlRequest = (data: Uint8Array | string): Parsed<ControlRequest> => {
  const e = parseControlEnvelope(data);
  return e.ok ? checkControlRequest(e.value.raw) : e;
};
export const parseHeartbeat = (data: Uint8Array | string): Parsed<Heartbeat> => parseWith(heartbeatSchema, data);
export const parseProgressReport = (data: Uint8Array | string): Parsed<ProgressReport> => parseWith(progressSchema, data);
export const parseControlReply = (data: Uint8Array | string): Parsed<ControlReply> => parseWith(replySchema, data);
export const parseJobState = (data: Uint8Array | string): Parsed<JobState> => parseWith(jobStateSchema, data);
