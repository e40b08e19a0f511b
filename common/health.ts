/**
 * What a process's `/healthz` and `/readyz` answer (served by `serveMetrics`):
 *  - healthy: the main loop ran recently. While the loop works (a trainer training, a coordinator ticking) it
 *    beats; when it waits on something outside the process (a rendezvous, the next epoch) it says so, and the wait
 *    is healthy however long it lasts (a blocked event loop does not answer the probe at all). Work with no beat for
 *    longer than `stallMs` is reported unhealthy: a hung step, a dead-locked loop.
 *  - ready: the process is doing its job (a trainer joined and holding a generation), with the reason when not.
 */

export interface ProbeResult {
  ok: boolean;
  /** One line: what the process is doing, or why it is not ok. */
  detail: string;
}

export type Probe = () => ProbeResult;

export interface ProcessHealthOptions {
  /** Work without a beat for longer than this is a stall (unhealthy), ms. */
  stallMs: number;
  /** Clock, ms (tests). Default Date.now. */
  now?: () => number;
  /** Readiness before the first `setReady`. Default: not ready, "starting". */
  initiallyReady?: ProbeResult;
}

export class ProcessHealth {
  private last: number;
  private activity = 'starting';
  private waitingOn: string | undefined;
  private readiness: ProbeResult;
  private readonly now: () => number;

  constructor(private readonly o: ProcessHealthOptions) {
    this.now = o.now ?? Date.now;
    this.last = this.now();
    this.readiness = o.initiallyReady ?? { ok: false, detail: 'starting' };
  }

  /** The main loop did some work (`activity`, e.g. "step 12"). */
  beat(activity: string): void {
    this.last = this.now();
    this.activity = activity;
    this.waitingOn = undefined;
  }

  /** The main loop waits on something outside the process (healthy until the next `beat`). */
  waiting(on: string): void {
    this.last = this.now();
    this.waitingOn = on;
  }

  setReady(ok: boolean, detail: string): void {
    this.readiness = { ok, detail };
  }

  /** `/healthz` */
  health: Probe = () => {
    const ageMs = this.now() - this.last;
    const age = `${(ageMs / 1000).toFixed(1)} s ago`;
    if (this.waitingOn !== undefined) return { ok: true, detail: `waiting for ${this.waitingOn} since ${age}` };
    if (ageMs > this.o.stallMs) {
      return { ok: false, detail: `main loop stalled: last ${this.activity} ${age} (limit ${Math.round(this.o.stallMs / 1000)} s)` };
    }
    return { ok: true, detail: `last ${this.activity} ${age}` };
  };

  /** `/readyz` */
  ready: Probe = () => ({ ...this.readiness });
}
