/**
 * The membership client a trainer uses: join with the job token, heartbeat, learn assignments
 * and commits by watching the job state in NATS KV, send requests (failure, commit, epochDone, leave) to the
 * coordinator. Requests retry while no coordinator answers (it may be restarting) and are idempotent there.
 */
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { NatsConnection } from '@nats-io/transport-node';
import { Blip2Error, createLogger, jobSubjects, natsConnectDataOf, type Logger } from '../../common';
import { assignmentOf } from './assignment';
import { JobStore } from './store';
import {
  AuthError, GenerationChangedError, JobFinishedError, ProtocolError,
  type Assignment, type CommitInfo, type JobState,
} from './types';
import { parseControlReply } from './validate';
import { encode, type ControlReply, type ControlRequest, type Heartbeat, type ProgressReport } from './wire';

export interface JoinOptions {
  nc: NatsConnection;
  jobId: string;
  token: string;
  nodeId: string;
  /** host:port of this trainer's collective gRPC server. */
  address: string;
  /** Heartbeat period. Default: 500 ms. */
  heartbeatMs?: number;
  /** How long a request keeps retrying while no coordinator answers. Default: 120 000 ms. */
  requestDeadlineMs?: number;
  /**
   * Heartbeat from a worker thread with its own NATS connection, so that long synchronous work on this thread does
   * not stop the beats. Default: on when `nc` came from connectJobNats (its options are known), else off. While on,
   * the beats stop if this thread has not run for `stallMs` (a hung process). Default stallMs: 600 000 (one step
   * of the `small` preset on the tfjs cpu engine can take minutes).
   */
  heartbeatWorker?: boolean;
  stallMs?: number;
  log?: Logger;
}

type Waiter = { check: (s: JobState) => void; fail: (e: Error) => void };

export class JobMember {
  private state: JobState | null = null;
  private readonly waiters = new Set<Waiter>();
  private readonly generationListeners = new Set<(generation: number) => void>();
  private heartbeat?: NodeJS.Timeout;
  private worker?: Worker;
  private stopWatch?: () => void;
  private closed = false;
  private readonly subjects: ReturnType<typeof jobSubjects>;
  private readonly log: Logger;
  /** This process's incarnation: tells a restarted process from a retried join. */
  readonly incarnation = randomBytes(8).toString('hex');

  private constructor(private readonly o: JoinOptions) {
    this.subjects = jobSubjects(o.jobId);
    this.log = o.log ?? createLogger('member', { job: o.jobId, node: o.nodeId });
  }

  /** Joins the job; throws AuthError (clear message) on a wrong token. */
  static async join(o: JoinOptions): Promise<JobMember> {
    const m = new JobMember(o);
    await m.request({ type: 'join', token: o.token, nodeId: o.nodeId, address: o.address, incarnation: m.incarnation });
    const store = await JobStore.open(o.nc, o.jobId);
    m.stopWatch = await store.watch(({ state }) => m.onState(state), (why) => m.log.warn('job state update ignored', { error: why }));
    const hb: Heartbeat = { token: o.token, nodeId: o.nodeId, address: o.address, incarnation: m.incarnation };
    const periodMs = o.heartbeatMs ?? 500;
    const data = natsConnectDataOf(o.nc);
    if ((o.heartbeatWorker ?? true) && data) {
      m.worker = new Worker(new URL('./heartbeat-worker.mjs', import.meta.url), {
        workerData: {
          ...data, creds: data.creds ? Array.from(data.creds) : undefined, subject: m.subjects.heartbeat, payload: encode(hb),
          periodMs, stallMs: o.stallMs ?? 600_000, name: `blip2-heartbeat-${o.nodeId}`,
        },
      });
      m.worker.unref();
      await new Promise<void>((resolve, reject) => {
        m.worker!.once('message', () => resolve());
        m.worker!.once('error', (e) => reject(new Blip2Error(`heartbeat worker of ${o.nodeId} failed to start: ${e.message}`)));
      });
      m.heartbeat = setInterval(() => m.worker?.postMessage('tick'), periodMs);
      // A worker that dies later: beat from this thread instead, rather than go silent.
      m.worker.on('error', (e) => {
        if (m.closed) return;
        m.log.error('heartbeat worker failed; heartbeats continue from the main thread', { error: e.message });
        if (m.heartbeat) clearInterval(m.heartbeat);
        m.worker = undefined;
        m.heartbeat = m.mainThreadHeartbeat(hb, periodMs);
      });
    } else {
      m.heartbeat = m.mainThreadHeartbeat(hb, periodMs);
    }
    // The first state, so that `generation` is meaningful right after join.
    await m.waitFor(() => true);
    return m;
  }

  /** The latest job state seen (read-only view). */
  get jobState(): JobState | null {
    return this.state;
  }

  get generation(): number {
    return this.state?.generation ?? 0;
  }

  get nodeId(): string {
    return this.o.nodeId;
  }

  onGenerationChange(cb: (generation: number) => void): () => void {
    this.generationListeners.add(cb);
    return () => this.generationListeners.delete(cb);
  }

  /** The next assignment of a generation above `afterGeneration` that gives this node a rank. */
  waitForAssignment(afterGeneration = -1, signal?: AbortSignal): Promise<Assignment> {
    return this.waitFor((s) => {
      if (s.status === 'finished') throw new JobFinishedError(`job ${s.jobId} has finished (${s.reason})`);
      if (s.generation <= afterGeneration) return undefined;
      return assignmentOf(s, this.o.nodeId) ?? undefined;
    }, signal);
  }

  /** Resolves once the job is in `epoch` or later (after epochDone of the one before); rejects when finished. */
  waitForEpoch(epoch: number, signal?: AbortSignal): Promise<number> {
    return this.waitFor((s) => {
      if (s.epoch >= epoch) return s.epoch;
      if (s.status === 'finished') throw new JobFinishedError(`job ${s.jobId} has finished (${s.reason})`);
      return undefined;
    }, signal);
  }

  /** Resolves when the job has finished. */
  waitFinished(signal?: AbortSignal): Promise<JobState> {
    return this.waitFor((s) => (s.status === 'finished' ? s : undefined), signal);
  }

  async reportFailure(generation: number, detail: { missingRank?: number; op?: string; message: string }): Promise<void> {
    await this.request({ type: 'failure', token: this.o.token, nodeId: this.o.nodeId, generation, ...detail });
  }

  /** Rank 0, after the checkpoint is on disk. Throws ProtocolError when refused (for example a stale generation). */
  async proposeCommit(c: CommitInfo & { generation: number }): Promise<void> {
    const { generation, ...commit } = c;
    await this.request({ type: 'commit', token: this.o.token, nodeId: this.o.nodeId, generation, commit });
  }

  /**
   * Resolves with the commit once a commit at `step` or later is recorded (ackedShards cumulative over its epoch).
   * Rejects with GenerationChangedError if the generation changes first, JobFinishedError if the job ends first.
   */
  waitCommitted(step: number, signal?: AbortSignal): Promise<CommitInfo> {
    const generation = this.generation;
    return this.waitFor((s) => {
      if (s.committed && s.committed.step >= step) return s.committed;
      if (s.status === 'finished') throw new JobFinishedError(`job ${s.jobId} finished before step ${step} was committed`);
      if (s.generation !== generation) {
        throw new GenerationChangedError(s.generation, `generation changed (${generation} -> ${s.generation}: ${s.reason}) before step ${step} was committed`);
      }
      return undefined;
    }, signal);
  }

  /** Rank 0: feeds the launcher's progress display (fire and forget). */
  reportProgress(p: { step: number; epoch: number; losses: Record<string, number>; samples: number; samplesPerSec: number }): void {
    const report: ProgressReport = { nodeId: this.o.nodeId, generation: this.generation, ...p, time: Date.now() };
    try {
      this.o.nc.publish(this.subjects.progress, encode(report));
    } catch {
      // progress is best effort
    }
  }

  /** Rank 0 when every rank saw the end of `epoch` and its last commit is recorded; the coordinator plans the next. */
  async epochDone(epoch: number): Promise<void> {
    await this.request({ type: 'epochDone', token: this.o.token, nodeId: this.o.nodeId, generation: this.generation, epoch });
  }

  /** Leaves the job (a new generation forms without this node) and stops heartbeating. */
  async leave(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopHeartbeat();
    try {
      // A finished job has no members to leave (and its coordinator may be gone).
      if (this.state?.status !== 'finished') await this.request({ type: 'leave', token: this.o.token, nodeId: this.o.nodeId, incarnation: this.incarnation }, 5000);
    } finally {
      this.close();
    }
  }

  /** Stops heartbeats and the state watch without telling the coordinator (it will declare this node lost). */
  close(): void {
    this.closed = true;
    this.stopHeartbeat();
    this.stopWatch?.();
    for (const w of [...this.waiters]) w.fail(new Blip2Error(`member ${this.o.nodeId} of job ${this.o.jobId} was closed`));
  }

  private mainThreadHeartbeat(hb: Heartbeat, periodMs: number): NodeJS.Timeout {
    const beat = () => {
      if (this.closed) return;
      try {
        this.o.nc.publish(this.subjects.heartbeat, encode(hb));
      } catch {
        // connection closing; the next beat or close() settles it
      }
    };
    beat();
    return setInterval(beat, periodMs);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    const w = this.worker;
    this.worker = undefined;
    if (w) {
      w.postMessage('stop');
      setTimeout(() => void w.terminate(), 2000).unref();
    }
  }

  private onState(s: JobState): void {
    const before = this.state?.generation;
    this.state = s;
    if (before !== undefined && s.generation !== before) {
      for (const cb of this.generationListeners) {
        try {
          cb(s.generation);
        } catch (e) {
          this.log.error('generation listener threw', { error: (e as Error).message });
        }
      }
    }
    for (const w of [...this.waiters]) w.check(s);
  }

  private waitFor<T>(pred: (s: JobState) => T | undefined, signal?: AbortSignal): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason ?? new Error('aborted'));
      const w: Waiter = {
        check: (s) => {
          let v: T | undefined;
          try {
            v = pred(s);
          } catch (e) {
            done();
            return reject(e);
          }
          if (v !== undefined) {
            done();
            resolve(v);
          }
        },
        fail: (e) => {
          done();
          reject(e);
        },
      };
      const onAbort = () => {
        done();
        reject(signal?.reason ?? new Error('aborted'));
      };
      const done = () => {
        this.waiters.delete(w);
        signal?.removeEventListener('abort', onAbort);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.add(w);
      if (this.state) w.check(this.state);
    });
  }

  /** Sends a control request; retries while no coordinator answers, until the deadline. */
  private async request(req: ControlRequest, deadlineMs = this.o.requestDeadlineMs ?? 120_000): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    let lastError = '';
    for (let attempt = 0; ; attempt++) {
      let reply: ControlReply;
      try {
        const msg = await this.o.nc.request(this.subjects.control, encode(req), { timeout: 5000 });
        const parsed = parseControlReply(msg.data);
        if (!parsed.ok) throw new Blip2Error(`the answer to ${req.type} is not a control reply: ${parsed.message}`);
        reply = parsed.value;
      } catch (e) {
        lastError = (e as Error).message;
        if (Date.now() > deadline) {
          throw new Blip2Error(`job ${this.o.jobId}: no coordinator answered ${req.type} within ${deadlineMs} ms (last error: ${lastError})`);
        }
        if (attempt === 0 || attempt % 20 === 0) this.log.info('waiting for the coordinator', { request: req.type, error: lastError });
        await new Promise((r) => setTimeout(r, Math.min(1000, 100 * (attempt + 1))));
        continue;
      }
      if (reply.ok) return;
      if (reply.code === 'auth') throw new AuthError(reply.message);
      throw new ProtocolError(`job ${this.o.jobId}: ${req.type} refused: ${reply.message}`);
    }
  }
}
