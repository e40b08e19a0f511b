/**
 * `blip2 launch` as a supervisor of the processes it starts on this machine:
 *  - `Supervisor`: starts each process in its own process group, restarts one that dies before the job ends
 *    (after `launch.backoffMs`, doubled at each further restart of the same process, up to `launch.restarts`
 *    times), and stops every group (SIGTERM, then SIGKILL) when the launch ends;
 *  - `LaunchLock`: `<runDir>/launch.lock`, the launcher's pid and the pid of every process it runs. A launch refuses
 *    a run dir whose launcher is alive, and stops the processes a killed launcher left behind (reporting them), so
 *    no second nats-server ever opens a store another one holds.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Blip2Error, UsageError } from '../common';

type Say = (line: string) => void;

/** What `launch.lock` records of a process. */
export interface LockedProcess {
  name: string;
  pid: number;
  /** A word of its command line, checked before a later launch signals the pid (pids are reused). */
  mark: string;
}

interface LockFile {
  launcher: number;
  startedAt: string;
  processes: LockedProcess[];
}

/** The command line of a live process (Linux), or undefined when it does not exist (or cannot be read). */
function commandLine(pid: number): string | undefined {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return undefined;
  }
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return existsSync('/proc/self') ? undefined : '';
  }
}

/** Sends `signal` to the process group of `pid` (or to the pid alone when it leads no group). */
function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // gone already
    }
  }
}

/** A wait that keeps the process alive (an unref'd one would let Node end a launch that has nothing else pending). */
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** `<runDir>/launch.lock`. */
export class LaunchLock {
  private readonly processes = new Map<string, LockedProcess>();
  private constructor(readonly path: string) {}

  /**
   * Checks the run dir's lock before anything starts: refused (UsageError) when its launcher is alive; the
   * processes of a launcher that was killed are stopped (SIGTERM to their groups, SIGKILL after 5 s) and reported.
   */
  static async acquire(runDir: string, say: Say): Promise<LaunchLock> {
    const lock = new LaunchLock(join(runDir, 'launch.lock'));
    let old: LockFile | undefined;
    try {
      old = JSON.parse(readFileSync(lock.path, 'utf8')) as LockFile;
    } catch {
      old = undefined; // none, or unreadable: nothing to clean
    }
    if (old && old.launcher !== process.pid) {
      const cmd = commandLine(old.launcher);
      if (cmd !== undefined && /\blaunch\b/.test(cmd)) {
        throw new UsageError(`${runDir} is in use by another blip2 launch (pid ${old.launcher}, started ${old.startedAt}); stop it first (Ctrl-C or kill ${old.launcher})`);
      }
      const alive = (old.processes ?? []).filter((p) => {
        const c = commandLine(p.pid);
        return c !== undefined && c.includes(p.mark);
      });
      if (alive.length) {
        say(`a previous launch of this run dir (pid ${old.launcher}) ended without stopping its processes: stopping ${alive.map((p) => `${p.name} (pid ${p.pid})`).join(', ')}`);
        for (const p of alive) signalGroup(p.pid, 'SIGTERM');
        const deadline = Date.now() + 5000;
        while (Date.now() < deadline && alive.some((p) => commandLine(p.pid)?.includes(p.mark))) await sleep(100);
        const stubborn = alive.filter((p) => commandLine(p.pid)?.includes(p.mark));
        for (const p of stubborn) signalGroup(p.pid, 'SIGKILL');
        if (stubborn.length) say(`killed ${stubborn.map((p) => `${p.name} (pid ${p.pid})`).join(', ')}, which did not stop within 5 s`);
        for (let i = 0; i < 50 && stubborn.some((p) => commandLine(p.pid) !== undefined); i++) await sleep(100);
      } else {
        say(`a previous launch of this run dir (pid ${old.launcher}) ended without removing ${lock.path}; none of its processes is left`);
      }
    }
    lock.write();
    return lock;
  }

  /** Records a process (replacing the one of the same name). */
  set(p: LockedProcess): void {
    this.processes.set(p.name, p);
    this.write();
  }

  private write(): void {
    const body: LockFile = { launcher: process.pid, startedAt: new Date().toISOString(), processes: [...this.processes.values()] };
    // Written aside, then renamed: a reader (the next launch, an operator's script) never sees half a file.
    writeFileSync(`${this.path}.tmp`, JSON.stringify(body, null, 2) + '\n');
    renameSync(`${this.path}.tmp`, this.path);
  }

  /** The launch is over and its processes have exited. */
  release(): void {
    rmSync(this.path, { force: true });
  }
}

export interface SupervisorOptions {
  /** Restarts allowed per process (`launch.restarts`). */
  restarts: number;
  /** First restart's wait (`launch.backoffMs`), doubled at each further restart of the same process, at most 30 s. */
  backoffMs: number;
  /** A process up this long before it died has its restart count reset (`launch.restartsResetMs`; 0: never). */
  restartsResetMs: number;
  logDir: string;
  say: Say;
  lock: LaunchLock;
  /** False once the job has ended or the launch is stopping: nothing is restarted then. */
  keepGoing(): boolean;
  /** The last lines of a process's log, for the console. */
  lastLines(path: string): string;
}

/**
 * Asked when a trainer exits for bad input (2; e.g. it cannot restore the committed checkpoint): undefined when the job's committed checkpoint passes its checks, else
 * the rewind to run while no process of the job runs (the job state back to the previous valid checkpoint); it
 * throws when there is none.
 */
export type CheckpointGuard = () => Promise<(() => Promise<void>) | undefined>;

/** A supervised process: its current incarnation and how it ended. */
export interface Supervised {
  name: string;
  kind: 'coordinator' | 'trainer';
  proc: ChildProcess;
  restarts: number;
  /** Set once it has exited and will not be restarted: its last exit code (null: a signal). */
  gone?: { code: number | null; signal: NodeJS.Signals | null };
}

/** True when a process started at `startedAt` has run `resetMs` (> 0): its restart count starts again. */
export const restartsReset = (startedAt: number, resetMs: number): boolean => resetMs > 0 && Date.now() - startedAt >= resetMs;

/** Exit status of a job process for bad input (its config, its token): starting it again would fail the same way. */
const EXIT_BAD_INPUT = 2;

export class Supervisor {
  readonly procs: Supervised[] = [];
  private readonly waiters = new Set<() => void>();
  private failure: Error | undefined;
  private onFailure: ((e: Error) => void) | undefined;
  private stopping = false;
  private readonly spawners = new Map<Supervised, { mark: string; spawnIt: () => ChildProcess }>();
  /** Processes this supervisor killed itself to restart the whole job: their exits are not failures. */
  private readonly killedForRestart = new WeakSet<ChildProcess>();
  /** The check (and rewind) a failed trainer started; resolves true when the whole job was restarted. */
  private guarding: Promise<boolean> | undefined;
  /** Set by the launcher once it can read the job state: see `CheckpointGuard`. */
  checkpointGuard: CheckpointGuard | undefined;

  constructor(private readonly o: SupervisorOptions) {}

  /** Starts `spawnIt()` as `name` and keeps it running until the job ends (see the class). */
  start(name: string, kind: Supervised['kind'], mark: string, spawnIt: () => ChildProcess): Supervised {
    const s: Supervised = { name, kind, proc: spawnIt(), restarts: 0 };
    this.procs.push(s);
    this.spawners.set(s, { mark, spawnIt });
    this.watch(s, mark, spawnIt);
    return s;
  }

  /**
   * A trainer exited for bad input: when the committed checkpoint fails its checks (no trainer can restore it, so restarting them
   * alone would fail again), every process is stopped (SIGKILL to its group), the job state goes back to the
   * previous valid checkpoint, and every process is started again (none of this counts as a restart).
   */
  private guardCheckpoint(failed: string, log: string): Promise<boolean> {
    this.guarding ??= (async () => {
      try {
        const rewind = await this.checkpointGuard?.();
        if (!rewind || this.stopping || !this.o.keepGoing()) return false;
        this.o.say(`${failed}, and the committed checkpoint fails its checks: stopping every process to go back to the previous valid one; its last lines (${log}):\n${this.o.lastLines(log)}`);
        const running = () => this.procs.filter((p) => p.proc.exitCode === null && p.proc.signalCode === null && p.proc.pid);
        for (const p of running()) {
          this.killedForRestart.add(p.proc);
          signalGroup(p.proc.pid!, 'SIGKILL');
        }
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline && running().length) await sleep(100);
        await rewind();
        if (this.stopping || !this.o.keepGoing()) return true;
        for (const s of this.procs) {
          const sp = this.spawners.get(s)!;
          s.gone = undefined;
          s.proc = sp.spawnIt();
          this.watch(s, sp.mark, sp.spawnIt);
        }
        this.o.say(`started the coordinator and ${this.procs.filter((p) => p.kind === 'trainer').length} trainer(s) again from the previous valid checkpoint`);
        return true;
      } catch (e) {
        this.fail(e instanceof Error ? e : new Error(String(e)));
        return false;
      } finally {
        this.guarding = undefined;
      }
    })();
    return this.guarding;
  }

  private watch(s: Supervised, mark: string, spawnIt: () => ChildProcess): void {
    const { o } = this;
    if (s.proc.pid) o.lock.set({ name: s.name, pid: s.proc.pid, mark });
    const proc = s.proc;
    const startedAt = Date.now();
    proc.once('exit', (code, signal) => {
      void (async () => {
        if (this.killedForRestart.has(proc)) return; // started again by guardCheckpoint
        // Up for launch.restartsResetMs: this failure is the first of a new series.
        if (s.restarts > 0 && restartsReset(startedAt, o.restartsResetMs)) s.restarts = 0;
        const how = code !== null ? `exited with code ${code}` : `was killed by ${signal}`;
        const log = join(o.logDir, `${s.name}.log`);
        // A trainer that exits for bad input (2, never restarted as such) may have found the commit it restores corrupt;
        // other failures are restarted at once, without waiting for a look at the job state (NATS may be down).
        if (s.kind === 'trainer' && code === EXIT_BAD_INPUT && !this.stopping && o.keepGoing() && this.checkpointGuard) {
          if (await this.guardCheckpoint(`${s.name} ${how}`, log)) return; // every process started again, this one too
          if (this.failure) {
            s.gone = { code, signal };
            for (const w of [...this.waiters]) w();
            return;
          }
        }
        if (code === 0 || this.stopping || !o.keepGoing()) {
          s.gone = { code, signal };
        } else if (code === EXIT_BAD_INPUT || s.restarts >= o.restarts) {
          s.gone = { code, signal };
          const why = code === EXIT_BAD_INPUT ? 'bad input: not restarted' : `not restarted: launch.restarts is ${o.restarts}`;
          o.say(`${s.name} ${how} (${why}); its last lines (${log}):\n${o.lastLines(log)}`);
          if (s.kind === 'coordinator') this.fail(new Blip2Error(`the coordinator ${how} (${why}); its last lines (${log}):\n${o.lastLines(log)}`));
        } else {
          s.restarts++;
          const wait = Math.min(30_000, o.backoffMs * 2 ** (s.restarts - 1));
          o.say(`${s.name} ${how}; restarting it in ${(wait / 1000).toFixed(1)} s (restart ${s.restarts} of ${o.restarts}); its last lines (${log}):\n${o.lastLines(log)}`);
          await sleep(wait);
          if (this.stopping || !o.keepGoing()) {
            s.gone = { code, signal };
          } else {
            s.proc = spawnIt();
            this.watch(s, mark, spawnIt);
            return;
          }
        }
        for (const w of [...this.waiters]) w();
      })();
    });
  }

  /** The job cannot go on (a process it needs is gone for good): `failed()` rejects with `e`. */
  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.onFailure?.(e);
  }

  /** Rejects when a process the job cannot do without is gone for good (the coordinator). */
  failed(): Promise<never> {
    return new Promise<never>((_, reject) => {
      if (this.failure) return reject(this.failure);
      this.onFailure = reject;
    });
  }

  /** Every trainer this launch started has exited and none will be restarted. */
  trainersGone(): boolean {
    const t = this.procs.filter((p) => p.kind === 'trainer');
    return t.length > 0 && t.every((p) => p.gone);
  }

  /** Calls `cb` whenever a process is gone for good; returns the unsubscribe. */
  onGone(cb: () => void): () => void {
    this.waiters.add(cb);
    return () => this.waiters.delete(cb);
  }

  /** Resolves once every process has exited (none is being restarted), or after `ms`. */
  async allExited(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline && !this.procs.every((p) => p.gone || (p.proc.exitCode !== null || p.proc.signalCode !== null))) await sleep(100);
  }

  /** No more restarts: SIGTERM to every process group, SIGKILL to those left after `graceMs`. */
  async stopAll(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    const running = () => this.procs.filter((p) => p.proc.exitCode === null && p.proc.signalCode === null && p.proc.pid);
    for (const p of running()) signalGroup(p.proc.pid!, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && running().length) await sleep(100);
    for (const p of running()) signalGroup(p.proc.pid!, 'SIGKILL');
  }
}
