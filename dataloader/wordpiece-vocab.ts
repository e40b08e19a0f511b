/**
 * A Q-Former tokenizer from a dataset's own captions (`blip2 data tokenizer`): a BERT-style WordPiece tokenizer.json
 * (`bertTokenizerJson`: lower-casing BertNormalizer, BertPreTokenizer, [PAD] [UNK] [CLS] [SEP] [MASK]) whose vocabulary
 * is every character seen (alone and as a "##" continuation, so that no caption word becomes [UNK]) and then the most
 * frequent words, up to a vocabulary size. A word outside the vocabulary splits into known pieces as WordPiece does
 * (longest prefix first), at worst into its characters.
 *
 * The words are counted as BERT's normaliser and pre-tokenizer cut them: lower case, accents stripped (NFD, marks
 * removed), control characters dropped, split at whitespace, each punctuation character and each CJK ideograph a
 * word of its own.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { descriptorId, type ShardDescriptor } from './descriptor';
import type { DatasetIndex } from './dataset-index';
import { DatasetError } from './errors';
import { readShard } from './shard-reader';
import { bertTokenizerJson } from './tokenizer';

const SPECIALS = 5; // [PAD] [UNK] [CLS] [SEP] [MASK]

/** BERT's punctuation: ASCII symbol ranges, or a Unicode punctuation character. */
function isPunctuation(ch: string): boolean {
  const c = ch.codePointAt(0)!;
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  return /\p{P}/u.test(ch);
}

/** CJK ideographs (BertNormalizer handle_chinese_chars puts spaces around them). */
function isCjk(c: number): boolean {
  return (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3400 && c <= 0x4dbf) || (c >= 0x20000 && c <= 0x2a6df) || (c >= 0x2a700 && c <= 0x2b73f)
    || (c >= 0x2b740 && c <= 0x2b81f) || (c >= 0x2b820 && c <= 0x2ceaf) || (c >= 0xf900 && c <= 0xfaff) || (c >= 0x2f800 && c <= 0x2fa1f);
}

/** The words of a text as the BERT normaliser and pre-tokenizer cut them. */
export function bertWords(text: string): string[] {
  const clean = Array.from(text.toLowerCase().normalize('NFD').replace(/\p{Mn}/gu, ''))
    .filter((ch) => {
      const c = ch.codePointAt(0)!;
      return !(c === 0 || c === 0xfffd || (/\p{C}/u.test(ch) && ch !== '\t' && ch !== '\n' && ch !== '\r'));
    })
    .map((ch) => (isCjk(ch.codePointAt(0)!) ? ` ${ch} ` : ch))
    .join('');
  const out: string[] = [];
  for (const chunk of clean.split(/\s+/u)) {
    let word = '';
    for (const ch of chunk) {
      if (isPunctuation(ch)) {
        if (word) out.push(word);
        out.push(ch);
        word = '';
      } else word += ch;
    }
    if (word) out.push(word);
  }
  return out;
}

export interface WordPieceVocabulary {
  /** The tokenizer.json object. */
  json: object;
  /** Ids in the file (without the [DEC] that CaptionTokenizer appends). */
  vocabSize: number;
  /** Distinct words in the captions, and how many of them have an id of their own. */
  distinctWords: number;
  wordsKept: number;
  /** Share of the captions' word occurrences that are one token each. */
  coverage: number;
}

/**
 * The tokenizer of `captions` (see the file comment) with at most `vocabSize` ids in the file; refused when the
 * characters alone need more.
 */
export function wordPieceVocabulary(captions: Iterable<string>, vocabSize: number): WordPieceVocabulary {
  const counts = new Map<string, number>();
  const chars = new Set<string>();
  let occurrences = 0;
  for (const caption of captions) {
    for (const w of bertWords(caption)) {
      counts.set(w, (counts.get(w) ?? 0) + 1);
      occurrences++;
      for (const ch of w) chars.add(ch);
    }
  }
  if (!counts.size) throw new DatasetError('no caption has a word: nothing to build a vocabulary from');
  const charList = [...chars].sort();
  const pieces = [...charList, ...charList.map((c) => `##${c}`)];
  const room = vocabSize - SPECIALS - pieces.length;
  if (room < 0) throw new DatasetError(`--vocab-size ${vocabSize} is too small: the captions' ${charList.length} characters need ${SPECIALS + pieces.length} ids (with the 5 special tokens)`);
  const single = new Set(charList);
  const ranked = [...counts].filter(([w]) => !single.has(w)).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const kept = ranked.slice(0, room);
  const keptSet = new Set([...kept.map(([w]) => w), ...charList]);
  let covered = 0;
  let wordsKept = 0;
  for (const [w, n] of counts) {
    if (!keptSet.has(w)) continue;
    covered += n;
    wordsKept++;
  }
  const words = [...pieces, ...kept.map(([w]) => w)];
  return { json: bertTokenizerJson(words), vocabSize: SPECIALS + words.length, distinctWords: counts.size, wordsKept, coverage: covered / occurrences };
}

/**
 * The captions of the index's training datasets (split neither val nor test), after `pre_caption` as the trainer
 * reads them; `onDataset` hears each dataset as it is read.
 */
export async function readIndexCaptions(index: DatasetIndex, root: string, onDataset?: (name: string, samples: number) => void): Promise<string[]> {
  const captions: string[] = [];
  const datasets = index.datasets.filter((d) => d.split !== 'val' && d.split !== 'test');
  if (!datasets.length) throw new DatasetError(`${join(root, 'index.json')}: no training dataset (every split is val or test)`);
  for (const d of datasets) {
    onDataset?.(d.name, d.samples);
    for (const shard of d.shards) {
      if (shard.samples === 0) continue;
      if (!existsSync(join(root, shard.path))) throw new DatasetError(`${join(root, shard.path)}: shard file missing (dataset ${d.name})`);
      const r = { v: 1 as const, epoch: 0, seed: 0, dataset: d.name, format: d.format, shard: shard.path, start: 0, end: shard.samples, ...(d.imageRoot ? { imageRoot: d.imageRoot } : {}) };
      const desc: ShardDescriptor = { ...r, id: descriptorId(r), order: 0 };
      for await (const item of readShard(desc, { dataRoot: root })) if (item.kind === 'sample' && item.caption) captions.push(item.caption);
    }
  }
  return captions;
}

/** The console line that says a job has no Q-Former tokenizer and how to make one. */
export function missingTokenizerMessage(path: string, dataRoot: string): string {
  return `data.tokenizer ${path}: not found; the Q-Former needs a BERT-style tokenizer.json: make one from the captions with \`blip2 data tokenizer --data ${dataRoot}\` (writes ${join(dataRoot, 'tokenizer.json')}), or set data.tokenizer to the tokenizer.json of a BERT checkpoint (BLIP-2 uses bert-base-uncased's)`;
}
