/**
 * A job of in-process trainers without NATS: commits and epochs agreed in memory, shards served by a
 * LocalShardQueue. It follows the coordinator's rules (commits never go back, the next epoch is published after
 * epochDone, the job finishes after the last epoch) so that the loop can be tested in one process.
 */
import { Blip2Error } from '../../common';
import type { ShardDescriptor } from '../../dataloader';
import type { LocalShardQueue } from '../epoch-data';
import type { CommitChannel, CommitRecord } from '../loop';

/** Same name as the coordinator's error, which the loop recognises as the job's end. */
export class JobFinishedError extends Blip2Error {}

export class LocalJob implements CommitChannel {
  committed: CommitRecord | null = null;
  epoch = 0;
  finished = false;
  readonly commits: (CommitRecord & { generation: number })[] = [];
  private waiters: (() => void)[] = [];

  constructor(
    private readonly queue: LocalShardQueue,
    private readonly plan: (epoch: number) => ShardDescriptor[],
    private readonly epochs: number,
  ) {
    queue.publish(plan(0));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private until<T>(pred: () => T | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        try {
          const v = pred();
          if (v !== undefined) resolve(v);
          else this.waiters.push(check);
        } catch (e) {
          reject(e);
        }
      };
      check();
    });
  }

  async propose(c: CommitRecord & { generation: number }): Promise<void> {
    this.commits.push(structuredClone(c));
    if (!this.committed || c.step >= this.committed.step) {
      const { generation: _g, ...record } = c;
      this.committed = structuredClone(record);
    }
    this.wake();
  }

  waitCommitted(step: number): Promise<CommitRecord> {
    return this.until(() => (this.committed && this.committed.step >= step ? structuredClone(this.committed) : undefined));
  }

  async epochDone(epoch: number): Promise<void> {
    if (epoch === this.epoch) {
      this.epoch++;
      if (this.epoch < this.epochs) this.queue.publish(this.plan(this.epoch));
      else this.finished = true;
    }
    this.wake();
  }

  waitForEpoch(epoch: number): Promise<number> {
    return this.until(() => {
      if (this.finished) throw new JobFinishedError(`job finished after epoch ${this.epochs - 1}`);
      return this.epoch >= epoch ? this.epoch : undefined;
    });
  }
}
