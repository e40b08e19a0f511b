/**
 * The coordinator service: drives the protocol (coordinator/protocol.ts) from NATS messages, keeps the state in
 * KV with compare-and-set, watches heartbeats, publishes each epoch's shard descriptors, exports metrics.
 * It holds nothing that is not in KV except heartbeat times, which it rebuilds after a restart by giving every
 * recorded member one full timeout of grace.
 *
 * Event handling, one event at a time:
 *  1. read the cached state and revision; 2. `step()` it; 3. refused: reply with the error; 4. store the new state
 *     with compare-and-set; on a revision conflict re-read the state and go to 2; 5. run the actions.
 */
import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { createLogger, jobSubjects, type Logger, type ProcessHealth } from '../common';
import { CoordinatorMetrics } from './metrics';
import { initialState, step, type JobAction, type JobEvent, type ProtocolOptions } from './protocol';
import {
  checkControlRequest, encode, JobStore, parseControlEnvelope, parseHeartbeat, RevisionConflictError,
  type ControlReply, type JobState, type MessageFault, type StoredState,
} from './client';

/** The job's shard queue, as the coordinator drives it. */
export interface EpochPublisher {
  /** Publishes one epoch's shard descriptors; returns their keys. Idempotent (JetStream message-id dedup). */
  publishEpoch(epoch: number): Promise<{ shardKeys: string[] }>;
  /**
   * Rebuilds the queue for a new generation: removes every descriptor still queued or leased, then publishes the
   * epoch's descriptors that are not in `committedShards`, in plan order. Returns the keys published.
   */
  resetQueue(epoch: number, generation: number, committedShards: readonly string[]): Promise<{ shardKeys: string[] }>;
}

export interface CoordinatorOptions {
  nc: NatsConnection;
  jobId: string;
  /** The job token members must present. */
  token: string;
  protocol: ProtocolOptions;
  /** A member silent this long is declared lost. */
  heartbeatTimeoutMs: number;
  /** Period of the liveness / rendezvous check. Default: min(250, heartbeatTimeoutMs / 4). */
  tickMs?: number;
  publisher: EpochPublisher;
  metrics?: CoordinatorMetrics;
  /** Beaten by every liveness tick (`/healthz`); ready once started (`/readyz`). */
  health?: ProcessHealth;
  log?: Logger;
}

/** When a commit's checkpoint was written (its checkpoint.json `createdAt`), if the folder is readable here. */
function checkpointWrittenAt(dir: string): number | undefined {
  try {
    const meta = JSON.parse(readFileSync(join(dir, 'checkpoint.json'), 'utf8')) as { createdAt?: unknown };
    const t = typeof meta.createdAt === 'string' ? Date.parse(meta.createdAt) : NaN;
    return Number.isFinite(t) ? t : undefined;
  } catch {
    return undefined;
  }
}

export class Coordinator {
  private store!: JobStore;
  private current!: StoredState;
  private readonly subs: Subscription[] = [];
  private readonly lastSeen = new Map<string, number>();
  /** `nodeId/incarnation` of members that left: a heartbeat still in flight must not bring them back. */
  private readonly departed = new Set<string>();
  private queue: Promise<unknown> = Promise.resolve();
  private timer?: NodeJS.Timeout;
  private reconciling = false;
  private reconcileAgain = false;
  private stopped = false;
  /** When this process's NATS connection went down (null while connected). */
  private cutOffSince: number | null = null;
  private finishedResolve!: () => void;
  /** Resolves when the job is finished. */
  readonly finished: Promise<void>;
  private readonly log: Logger;
  private readonly subjects: ReturnType<typeof jobSubjects>;
  private readonly token: Buffer;

  constructor(private readonly o: CoordinatorOptions) {
    this.log = o.log ?? createLogger('coordinator', { job: o.jobId });
    this.subjects = jobSubjects(o.jobId);
    this.token = Buffer.from(o.token);
    this.finished = new Promise((r) => (this.finishedResolve = r));
  }

  get state(): JobState {
    return this.current.state;
  }

  async start(): Promise<void> {
    this.store = await JobStore.open(this.o.nc, this.o.jobId, { create: true });
    let stored = await this.store.read();
    if (!stored) {
      const state = initialState(this.o.jobId);
      try {
        stored = { state, revision: await this.store.compareAndSet(state, 0) };
        this.log.info('job created', { bucket: this.subjects.bucket });
      } catch (e) {
        if (!(e instanceof RevisionConflictError)) throw e;
        stored = (await this.store.read())!;
      }
    } else {
      this.log.info('job state recovered from KV', {
        status: stored.state.status, generation: stored.state.generation, epoch: stored.state.epoch,
        committedStep: stored.state.committed?.step ?? null, members: stored.state.members.length,
      });
    }
    this.current = stored;
    if (stored.state.committed) {
      const at = checkpointWrittenAt(stored.state.committed.checkpointDir);
      if (at !== undefined) this.metrics?.setLastCommit(at);
    }
    const now = Date.now();
    for (const m of stored.state.members) this.lastSeen.set(m.nodeId, now); // one timeout of grace after a restart
    this.updateMetrics();
    if (stored.state.status === 'finished') this.finishedResolve();

    const control = this.o.nc.subscribe(this.subjects.control, { callback: this.guard('control', (msg) => this.onControl(msg)) });
    const hb = this.o.nc.subscribe(this.subjects.heartbeat, { callback: this.guard('heartbeat', (msg) => this.onHeartbeat(msg)) });
    this.subs.push(control, hb);
    await this.o.nc.flush();
    await this.apply({ type: 'start' });
    this.reconcileQueue();
    this.watchConnection();
    const tickMs = this.o.tickMs ?? Math.max(20, Math.min(250, Math.floor(this.o.heartbeatTimeoutMs / 4)));
    this.timer = setInterval(() => {
      this.tick().catch((e: Error) => this.log.error('liveness check failed; next tick retries', { error: e.message }));
    }, tickMs);
    this.o.health?.beat('liveness check');
    this.o.health?.setReady(true, `coordinating job ${this.o.jobId}`);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.o.health?.setReady(false, 'stopping');
    this.o.health?.waiting('the process to exit');
    if (this.timer) clearInterval(this.timer);
    for (const s of this.subs) s.unsubscribe();
    await this.queue.catch(() => undefined);
  }

  private tokenOk(token: unknown): boolean {
    if (typeof token !== 'string') return false;
    const t = Buffer.from(token);
    return t.length === this.token.length && timingSafeEqual(t, this.token);
  }

  /**
   * While this coordinator's own NATS connection is down it hears nobody: silence then says nothing about the
   * members, so the liveness check pauses, and once the connection is back every member gets one full timeout of
   * grace (as after a restart) to be heard again.
   */
  private watchConnection(): void {
    void (async () => {
      for await (const st of this.o.nc.status()) {
        if (st.type === 'disconnect' && this.cutOffSince === null) {
          this.cutOffSince = Date.now();
          this.log.warn('NATS connection lost: liveness checks paused until it is back', { server: st.server });
        } else if (st.type === 'reconnect' && this.cutOffSince !== null) {
          const now = Date.now();
          this.log.info('NATS connection back: every member gets one timeout of grace', { server: st.server, cutOffMs: now - this.cutOffSince });
          this.cutOffSince = null;
          for (const m of this.current.state.members) this.lastSeen.set(m.nodeId, now);
          this.reconcileQueue();
        }
      }
    })().catch((e: Error) => this.log.error('connection status watch ended', { error: e.message }));
  }

  private async tick(): Promise<void> {
    if (this.stopped || this.cutOffSince !== null) return;
    const now = Date.now();
    const s = this.current.state;
    if (this.o.nc.isClosed()) this.o.health?.setReady(false, 'the NATS connection is closed');
    else this.o.health?.beat('liveness check');
    for (const m of s.members) {
      const seen = this.lastSeen.get(m.nodeId) ?? now;
      if (!this.lastSeen.has(m.nodeId)) this.lastSeen.set(m.nodeId, now);
      if (now - seen > this.o.heartbeatTimeoutMs) {
        this.lastSeen.delete(m.nodeId);
        this.log.warn('member lost: no heartbeat', { node: m.nodeId, silentMs: now - seen });
        await this.apply({ type: 'lost', nodeId: m.nodeId, reason: `no heartbeat for ${now - seen} ms`, now });
      }
    }
    if (s.status === 'waiting' && s.readySince !== null) await this.apply({ type: 'tick', now });
  }

  /**
   * A subscription callback that no message can break: a handler that throws is counted and logged, and the
   * subscription (which the client closes when its callback throws) keeps reading.
   */
  private guard(subject: 'control' | 'heartbeat', handler: (msg: Msg) => void): (err: Error | null, msg: Msg) => void {
    return (err, msg) => {
      if (err) {
        this.log.error('subscription error', { subject, error: err.message });
        return;
      }
      try {
        handler(msg);
      } catch (e) {
        this.rejected(subject, 'handler-error', (e as Error).message);
      }
    };
  }

  private readonly rejectLogged = new Map<string, { at: number; suppressed: number }>();

  /** Counts a refused message and logs why (at most once a second per subject and reason, with a count of the rest). */
  private rejected(subject: 'control' | 'heartbeat', reason: MessageFault | 'auth' | 'handler-error', message: string, extra: Record<string, unknown> = {}): void {
    this.metrics?.messagesRejected.inc({ subject, reason });
    const key = `${subject}/${reason}`;
    const seen = this.rejectLogged.get(key);
    const now = Date.now();
    if (seen && now - seen.at < 1000) {
      seen.suppressed++;
      return;
    }
    this.rejectLogged.set(key, { at: now, suppressed: 0 });
    this.log.warn('message rejected', { subject, reason, error: message, ...extra, ...(seen?.suppressed ? { alsoRejectedSinceLastLog: seen.suppressed } : {}) });
  }

  private onHeartbeat(msg: Msg): void {
    const parsed = parseHeartbeat(msg.data);
    if (!parsed.ok) return this.rejected('heartbeat', parsed.reason, parsed.message);
    const hb = parsed.value;
    if (!this.tokenOk(hb.token)) return this.rejected('heartbeat', 'auth', 'the job token does not match', { node: hb.nodeId });
    if (this.departed.has(`${hb.nodeId}/${hb.incarnation}`)) return;
    this.lastSeen.set(hb.nodeId, Date.now());
    const s = this.current.state;
    // A member declared lost that is still alive (it was stalled, or partitioned) comes back as a newcomer.
    if (s.status !== 'finished' && !s.members.some((m) => m.nodeId === hb.nodeId && m.incarnation === hb.incarnation)) {
      this.apply({ type: 'join', nodeId: hb.nodeId, address: hb.address, incarnation: hb.incarnation, now: Date.now() })
        .catch((e: Error) => this.log.error('could not take a returning member in; its next heartbeat retries', { node: hb.nodeId, error: e.message }));
    }
  }

  private onControl(msg: Msg): void {
    const reply = (r: ControlReply) => {
      if (!msg.reply) return;
      try {
        msg.respond(encode(r));
      } catch (e) {
        this.log.warn('could not answer a control request', { error: (e as Error).message });
      }
    };
    const envelope = parseControlEnvelope(msg.data);
    if (!envelope.ok) {
      this.rejected('control', envelope.reason, envelope.message);
      return reply({ ok: false, code: 'bad-request', message: `control message refused: ${envelope.message}` });
    }
    const { type, token, nodeId } = envelope.value;
    if (!this.tokenOk(token)) {
      this.metrics?.authRefused.inc();
      this.metrics?.messagesRejected.inc({ subject: 'control', reason: 'auth' });
      this.log.warn('request refused: wrong job token', { node: nodeId, type });
      return reply({
        ok: false, code: 'auth',
        message: `job ${this.o.jobId} refused ${String(type).slice(0, 40)} from node ${JSON.stringify(nodeId)?.slice(0, 260)}: the job token does not match (check job.token / BLIP2_JOB_TOKEN)`,
      });
    }
    const parsed = checkControlRequest(envelope.value.raw);
    if (!parsed.ok) {
      this.rejected('control', parsed.reason, parsed.message, { node: nodeId, type });
      return reply({ ok: false, code: 'bad-request', message: `${String(type).slice(0, 40)} refused: ${parsed.message}` });
    }
    const req = parsed.value;
    const now = Date.now();
    this.lastSeen.set(req.nodeId, now);
    let event: JobEvent;
    switch (req.type) {
      case 'join':
        event = { type: 'join', nodeId: req.nodeId, address: req.address, incarnation: req.incarnation, now };
        break;
      case 'leave':
        if (req.incarnation) this.departed.add(`${req.nodeId}/${req.incarnation}`);
        event = { type: 'leave', nodeId: req.nodeId, incarnation: req.incarnation, now };
        break;
      case 'failure':
        event = { type: 'failure', nodeId: req.nodeId, generation: req.generation, missingRank: req.missingRank, op: req.op, message: req.message, now };
        break;
      case 'commit':
        event = { type: 'commit', nodeId: req.nodeId, generation: req.generation, commit: req.commit };
        break;
      case 'epochDone':
        event = { type: 'epochDone', nodeId: req.nodeId, generation: req.generation, epoch: req.epoch };
        break;
      case 'stop':
        this.lastSeen.delete(req.nodeId); // the requester is not a member
        this.log.info('stop requested', { by: req.nodeId });
        event = { type: 'stop', by: req.nodeId };
        break;
      default:
        return reply({ ok: false, code: 'bad-request', message: `unknown request type ${JSON.stringify((req as { type: unknown }).type)}` });
    }
    this.apply(event).then(
      (error) => reply(error ? { ok: false, code: 'refused', message: error } : { ok: true }),
      (e: Error) => reply({ ok: false, code: 'refused', message: `coordinator error: ${e.message}` }),
    );
  }

  private get metrics() {
    return this.o.metrics;
  }

  /** Applies one event (serialised); resolves with the refusal message, if refused. */
  apply(event: JobEvent): Promise<string | undefined> {
    const run = async (): Promise<string | undefined> => {
      for (let attempt = 0; ; attempt++) {
        const r = step(this.current.state, event, this.o.protocol);
        if (r.error) return r.error;
        if (r.state !== this.current.state && JSON.stringify(r.state) !== JSON.stringify(this.current.state)) {
          try {
            const revision = await this.store.compareAndSet(r.state, this.current.revision);
            this.current = { state: r.state, revision };
          } catch (e) {
            if (!(e instanceof RevisionConflictError) || attempt >= 20) throw e;
            this.log.warn('job state changed underneath: re-reading', { attempt });
            this.current = (await this.store.read())!;
            continue;
          }
        }
        this.updateMetrics();
        for (const a of r.actions) this.run(a);
        this.reconcileQueue();
        return undefined;
      }
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private run(a: JobAction): void {
    const s = this.current.state;
    switch (a.type) {
      case 'generation':
        this.metrics?.generationChanges.inc();
        this.log.info('new generation', { generation: a.generation, worldSize: a.worldSize, reason: a.reason, ranks: s.world.map((p) => p.nodeId) });
        break;
      case 'committed':
        this.metrics?.setLastCommit(Date.now());
        this.log.info('checkpoint committed', { step: a.step, epoch: a.epoch, dir: s.committed?.checkpointDir });
        break;
      case 'publishEpoch':
      case 'resetQueue':
        break; // reconcileQueue() brings the queue to the state's epoch and generation
      case 'finished':
        this.log.info('job finished', { reason: s.reason, committedStep: s.committed?.step ?? null });
        this.finishedResolve();
        break;
    }
  }

  /**
   * Brings the shard queue to what the state asks for, one operation at a time: publish the current epoch if it
   * is not yet published; rebuild the queue for the current generation if it was not rebuilt yet. Each operation
   * ends with an event recording it (so a restarted coordinator redoes only what was not recorded). Retried on
   * failure; concurrent calls fold into one more pass.
   */
  private reconcileQueue(): void {
    if (this.reconciling) {
      this.reconcileAgain = true;
      return;
    }
    this.reconciling = true;
    void (async () => {
      try {
        do {
          this.reconcileAgain = false;
          if (this.stopped) return;
          const s = this.current.state;
          if (s.status === 'finished') return;
          if (s.publishedEpoch < s.epoch) {
            const { shardKeys } = await this.o.publisher.publishEpoch(s.epoch);
            this.log.info('epoch published', { epoch: s.epoch, shards: shardKeys.length });
            await this.apply({ type: 'published', epoch: s.epoch, shards: shardKeys.length });
            this.reconcileAgain = true;
          } else if (s.status === 'running' && s.queueGeneration < s.generation) {
            const committed = s.committed?.epoch === s.epoch ? s.committed.ackedShards : [];
            const { shardKeys } = await this.o.publisher.resetQueue(s.epoch, s.generation, committed);
            this.log.info('shard queue rebuilt for the generation', { generation: s.generation, epoch: s.epoch, shards: shardKeys.length, committedShards: committed.length });
            await this.apply({ type: 'queueReset', generation: s.generation });
            this.reconcileAgain = true;
          }
        } while (this.reconcileAgain);
      } catch (e) {
        this.log.error('shard queue operation failed; retrying in 1 s', { error: (e as Error).message });
        setTimeout(() => this.reconcileQueue(), 1000).unref();
      } finally {
        this.reconciling = false;
      }
    })();
  }

  private updateMetrics(): void {
    const m = this.metrics;
    if (!m) return;
    const s = this.current.state;
    m.worldSize.set(s.world.length);
    m.updateWorld(s.world.length);
    m.members.set(s.members.length);
    m.generation.set(s.generation);
    m.epoch.set(s.epoch);
    m.committedStep.set(s.committed?.step ?? 0);
    const acked = s.committed?.epoch === s.epoch ? s.committed.ackedShards.length : 0;
    m.syncLedger(s.ledger.commits, s.ledger.shardsAcked);
    m.shardsUncommitted.set(s.publishedEpoch === s.epoch ? Math.max(0, s.epochShards - acked) : 0);
    m.samplesCommitted.set(s.ledger.samplesCommitted);
    m.finished.set(s.status === 'finished' ? 1 : 0);
  }
}
