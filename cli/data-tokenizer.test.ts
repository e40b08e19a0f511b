// `blip2 data tokenizer` and the missing-tokenizer refusal through the real command (bin/blip2.js): a WordPiece
// tokenizer.json built from the synthetic dataset's captions gives every caption word an id of its own (none [UNK]);
// a smaller --vocab-size splits the rarer words into pieces, still without [UNK]; bad input exits 2 with one line;
// a job whose data folder has no tokenizer.json is refused before it starts, saying how to make one.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { bertWords, CaptionTokenizer, loadIndex, readIndexCaptions, wordPieceVocabulary, writeSynthDataset } from '../dataloader';

const bin = join(import.meta.dirname, '..', 'bin', 'blip2.js');
const blip2 = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
const tmp = mkdtempSync(join(tmpdir(), 'blip2-tokenizer-'));
const data = join(tmp, 'data');
let captions: string[];
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function expectUsage(r: ReturnType<typeof blip2>, message: RegExp): void {
  expect(r.status, r.stdout + r.stderr).toBe(2);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).toMatch(/(^|\n)blip2: [^\n]+\n$/); // the last line (progress lines may precede it)
}

beforeAll(async () => {
  await writeSynthDataset({ out: data, samples: 80, shardSize: 40, imageSize: 32, seed: 0 });
  rmSync(join(data, 'tokenizer.json'));
  captions = await readIndexCaptions(loadIndex(join(data, 'index.json')), data);
}, 120_000);

test('a job without data.tokenizer is refused before it starts, with how to make one', () => {
  const config = join(tmp, 'job.yaml');
  writeFileSync(config, `job: { id: tok-test, runDir: ${join(tmp, 'run')} }\ndata: { root: ${data} }\nmodel: { preset: tiny }\n`);
  const launch = blip2('launch', '--config', config);
  expectUsage(launch, new RegExp(`^blip2: data\\.tokenizer ${join(data, 'tokenizer.json')}: not found; the Q-Former needs a BERT-style tokenizer\\.json: make one from the captions with \`blip2 data tokenizer --data ${data}\` .*or set data\\.tokenizer to the tokenizer\\.json of a BERT checkpoint`));
  expect(existsSync(join(tmp, 'run', 'nats'))).toBe(false); // no server was started
}, 120_000);

test('blip2 data tokenizer: every word of the captions one token; a smaller vocabulary splits words, never [UNK]', () => {
  const r = blip2('data', 'tokenizer', '--data', data);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^\d+ captions, (\d+) distinct words; \1 have an id of their own \(100\.0% of word occurrences are one token\)$/m);
  expect(r.stdout).toContain(`wrote ${join(data, 'tokenizer.json')}`);
  const tok = CaptionTokenizer.fromFile(join(data, 'tokenizer.json'), { maxLength: 64 });
  expect(tok.kind).toBe('bert');
  const unk = 1; // bertTokenizerJson: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3
  for (const c of captions) {
    const ids = tok.encode(c);
    expect(ids.length, c).toBe(bertWords(c).length + 2); // [CLS] words [SEP]: one id per word
    expect(ids).not.toContain(unk);
  }
  // Again without --force: refused; with a small vocabulary: words split into pieces.
  expectUsage(blip2('data', 'tokenizer', '--data', data), /already exists \(give --force to replace it, or another --out\)/);
  // Ten ids fewer than the full vocabulary: the ten rarest words lose theirs.
  const full = Number(/wrote .*: (\d+) ids/.exec(r.stdout)?.[1]);
  const small = join(tmp, 'small.json');
  const s = blip2('data', 'tokenizer', '--data', data, '--vocab-size', String(full - 10), '--out', small);
  expect(s.status, s.stderr).toBe(0);
  expect(Number(/wrote .*: (\d+) ids/.exec(s.stdout)?.[1])).toBe(full - 10);
  const t2 = CaptionTokenizer.fromFile(small, { maxLength: 200 });
  let longer = 0;
  for (const c of captions) {
    const ids = t2.encode(c);
    expect(ids).not.toContain(unk);
    if (ids.length > bertWords(c).length + 2) longer++;
  }
  expect(longer).toBeGreaterThan(0);
  expect(() => wordPieceVocabulary(captions, 10)).toThrow(/--vocab-size 10 is too small: the captions' \d+ characters need \d+ ids/);
}, 120_000);
