/**
 * `reconcileLedgerFile`: the run dir's ledger.jsonl brought in line with the checkpoint a generation restores: a
 * commit whose line was never appended (rank 0 killed after the commit was recorded) is added, lines of commits past
 * the checkpoint (a job sent back to an older one) and torn lines are dropped. Real files in a temporary directory.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { reconcileLedgerFile } from './loop';

const lines = (path: string) => readFileSync(path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { epoch: number; step: number; ids: string[]; recovered?: boolean });

test('a commit missing from ledger.jsonl is appended from the checkpoint\'s ledger; a file that agrees is left alone', () => {
  const path = join(mkdtempSync(join(tmpdir(), 'blip2-ledger-')), 'ledger.jsonl');
  writeFileSync(path, JSON.stringify({ epoch: 0, step: 3, ids: ['a', 'b'] }) + '\n');
  // The checkpoint of step 6 holds a and b (step 3) and c, d (step 6, whose line was never written), and e of epoch 1.
  expect(reconcileLedgerFile(path, { 0: ['a', 'b', 'c', 'd'], 1: ['e'] }, 6)).toEqual({ added: 3, dropped: 0 });
  expect(lines(path)).toEqual([
    { epoch: 0, step: 3, ids: ['a', 'b'] },
    { epoch: 0, step: 6, ids: ['c', 'd'], recovered: true },
    { epoch: 1, step: 6, ids: ['e'], recovered: true },
  ]);
  const before = readFileSync(path, 'utf8');
  expect(reconcileLedgerFile(path, { 0: ['a', 'b', 'c', 'd'], 1: ['e'] }, 6)).toEqual({ added: 0, dropped: 0 });
  expect(readFileSync(path, 'utf8')).toBe(before);
});

test('lines past the restored step and torn lines are dropped; no file yet is a file with the checkpoint\'s ledger', () => {
  const path = join(mkdtempSync(join(tmpdir(), 'blip2-ledger-')), 'ledger.jsonl');
  writeFileSync(path, [JSON.stringify({ epoch: 0, step: 3, ids: ['a'] }), JSON.stringify({ epoch: 0, step: 9, ids: ['z'] }), '{"epoch":0,"st'].join('\n') + '\n');
  expect(reconcileLedgerFile(path, { 0: ['a'] }, 3)).toEqual({ added: 0, dropped: 2 });
  expect(lines(path)).toEqual([{ epoch: 0, step: 3, ids: ['a'] }]);
  const fresh = join(mkdtempSync(join(tmpdir(), 'blip2-ledger-')), 'ledger.jsonl');
  expect(reconcileLedgerFile(fresh, { 0: ['a', 'b'] }, 2)).toEqual({ added: 2, dropped: 0 });
  expect(lines(fresh)).toEqual([{ epoch: 0, step: 2, ids: ['a', 'b'], recovered: true }]);
});
