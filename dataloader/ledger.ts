/**
 * The sample ledger: which sample ids were committed in which epoch. Exactly-once per epoch is checkable against
 * the ids an epoch should contain. Persisted as JSON lines (`{"epoch":0,"ids":[...]}`), appended at each commit.
 */
import { appendFileSync, existsSync, readFileSync } from 'node:fs';

export interface LedgerCheck {
  ok: boolean;
  /** Expected ids never recorded. */
  missing: string[];
  /** Ids recorded more than once, with their counts. */
  duplicates: Array<{ id: string; count: number }>;
  /** Recorded ids that were not expected. */
  unexpected: string[];
}

export class SampleLedger {
  private readonly epochs = new Map<number, Map<string, number>>();

  record(epoch: number, ids: Iterable<string>): void {
    let m = this.epochs.get(epoch);
    if (!m) this.epochs.set(epoch, (m = new Map()));
    for (const id of ids) m.set(id, (m.get(id) ?? 0) + 1);
  }

  count(epoch: number, id: string): number {
    return this.epochs.get(epoch)?.get(id) ?? 0;
  }

  /** Total records in an epoch (duplicates counted). */
  size(epoch: number): number {
    let n = 0;
    for (const c of this.epochs.get(epoch)?.values() ?? []) n += c;
    return n;
  }

  check(epoch: number, expected: Iterable<string>): LedgerCheck {
    const seen = this.epochs.get(epoch) ?? new Map<string, number>();
    const want = new Set(expected);
    const missing = [...want].filter((id) => !seen.has(id));
    const duplicates = [...seen].filter(([, c]) => c > 1).map(([id, count]) => ({ id, count }));
    const unexpected = [...seen.keys()].filter((id) => !want.has(id));
    return { ok: !missing.length && !duplicates.length && !unexpected.length, missing, duplicates, unexpected };
  }

  /** Appends one commit to a JSON-lines ledger file (and records it here). */
  appendTo(path: string, epoch: number, ids: readonly string[]): void {
    appendFileSync(path, JSON.stringify({ epoch, ids }) + '\n');
    this.record(epoch, ids);
  }

  static readFrom(path: string): SampleLedger {
    const ledger = new SampleLedger();
    if (!existsSync(path)) return ledger;
    for (const line of readFileSync(path, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      const { epoch, ids } = JSON.parse(line) as { epoch: number; ids: string[] };
      ledger.record(epoch, ids);
    }
    return ledger;
  }
}
