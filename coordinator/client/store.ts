/**
 * The job state in NATS KV: one JSON value under `state` in bucket `blip2-job-<jobId>`, written only with
 * compare-and-set on the entry's revision (the fencing token), so two writers can never both win.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { Blip2Error, jobSubjects } from '../../common';
import type { JobState } from './types';
import { parseJobState } from './validate';

/** Someone else wrote the state since it was read: re-read and re-apply the event. */
export class RevisionConflictError extends Blip2Error {}
/** The stored job state breaks its schema (written by something other than a coordinator). */
export class InvalidJobStateError extends Blip2Error {}

export interface StoredState {
  state: JobState;
  /** KV revision of the entry (0: no entry yet). */
  revision: number;
}

export class JobStore {
  private constructor(readonly kv: KV, private readonly key: string, private readonly bucket: string) {}

  /** Opens (creating if asked) the job's bucket. */
  static async open(nc: NatsConnection, jobId: string, o: { create?: boolean } = {}): Promise<JobStore> {
    const { bucket, stateKey } = jobSubjects(jobId);
    const kvm = new Kvm(nc);
    const kv = o.create ? await kvm.create(bucket, { history: 5 }) : await kvm.open(bucket);
    return new JobStore(kv, stateKey, bucket);
  }

  /** The current state; a value that breaks the job state's schema is an InvalidJobStateError naming the rule. */
  async read(): Promise<StoredState | null> {
    const e = await this.kv.get(this.key);
    if (!e || e.operation !== 'PUT' || e.length === 0) return null;
    const parsed = parseJobState(e.value);
    if (!parsed.ok) throw new InvalidJobStateError(`job state in KV bucket ${this.bucket} (revision ${e.revision}) is not valid: ${parsed.message}`);
    return { state: parsed.value, revision: e.revision };
  }

  /** Writes `state` if the entry is still at `revision` (0: must not exist). Returns the new revision. */
  async compareAndSet(state: JobState, revision: number): Promise<number> {
    const value = JSON.stringify(state);
    try {
      return revision === 0 ? await this.kv.create(this.key, value) : await this.kv.update(this.key, value, revision);
    } catch (e) {
      const msg = (e as Error).message ?? '';
      if (/wrong last sequence|key exists/i.test(msg)) {
        throw new RevisionConflictError(`job state changed since revision ${revision}: ${msg}`);
      }
      throw e;
    }
  }

  /**
   * Calls `cb` with every new value of the state (the current one first), until the returned stop(). A value that
   * breaks the schema is skipped and handed to `onInvalid`; a callback that throws does not end the watch.
   */
  async watch(cb: (s: StoredState) => void, onInvalid: (why: string) => void = () => {}): Promise<() => void> {
    const it = await this.kv.watch({ key: this.key });
    void (async () => {
      for await (const e of it) {
        if (e.operation !== 'PUT' || e.length === 0) continue;
        const parsed = parseJobState(e.value);
        try {
          if (parsed.ok) cb({ state: parsed.value, revision: e.revision });
          else onInvalid(`job state revision ${e.revision} ignored: ${parsed.message}`);
        } catch (err) {
          onInvalid(`job state revision ${e.revision}: the watcher failed: ${(err as Error).message}`);
        }
      }
    })().catch(() => undefined);
    return () => it.stop();
  }
}
