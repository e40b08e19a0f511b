/**
 * The job state in NATS KV: one JSON value under `state` in bucket `blip2-job-<jobId>`, written only with
 * compare-and-set on the entry's revision (the fencing token), so two writers can never both win.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { Blip2Error, jobSubjects } from '../../common';
import type { JobState } from './types';

/** Someone else wrote the state since it was read: re-read and re-apply the event. */
export class RevisionConflictError extends Blip2Error {}

export interface StoredState {
  state: JobState;
  /** KV revision of the entry (0: no entry yet). */
  revision: number;
}

export class JobStore {
  private constructor(readonly kv: KV, private readonly key: string) {}

  /** Opens (creating if asked) the job's bucket. */
  static async open(nc: NatsConnection, jobId: string, o: { create?: boolean } = {}): Promise<JobStore> {
    const { bucket, stateKey } = jobSubjects(jobId);
    const kvm = new Kvm(nc);
    const kv = o.create ? await kvm.create(bucket, { history: 5 }) : await kvm.open(bucket);
    return new JobStore(kv, stateKey);
  }

  async read(): Promise<StoredState | null> {
    const e = await this.kv.get(this.key);
    if (!e || e.operation !== 'PUT' || e.length === 0) return null;
    return { state: e.json<JobState>(), revision: e.revision };
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

  /** Calls `cb` with every new value of the state (the current one first), until the returned stop(). */
  async watch(cb: (s: StoredState) => void): Promise<() => void> {
    const it = await this.kv.watch({ key: this.key });
    void (async () => {
      for await (const e of it) {
        if (e.operation === 'PUT' && e.length > 0) cb({ state: e.json<JobState>(), revision: e.revision });
      }
    })().catch(() => undefined);
    return () => it.stop();
  }
}
