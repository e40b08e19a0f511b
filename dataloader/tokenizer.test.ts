// The caption tokenizers (bert for the Q-Former, opt) loaded from tokenizer.json files.
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test, afterAll } from 'vitest';
import { bertTokenizerJson, byteLevelBpeTokenizerJson, CaptionTokenizer } from './tokenizer';
import { synthVocabulary } from './synth';
import { DatasetError } from './errors';

const tempDirs: string[] = [];
const tempDir = (prefix: string) => { const d = mkdtempSync(join(tmpdir(), prefix)); tempDirs.push(d); return d; };
afterAll(() => { for (const d of tempDirs) rmSync(d, { recursive: true, force: true }); });


describe('bert (Q-Former) tokenizer from a tokenizer.json', () => {
  const json = bertTokenizerJson(synthVocabulary());
  const dir = tempDir('blip2-tok-');
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
  const tok = CaptionTokenizer.fromFile(join(dir, 'tokenizer.json'));
  const vocab = (json as { model: { vocab: Record<string, number> } }).model.vocab;

  test('encodes [CLS] words [SEP], lower-cased, unknown words as [UNK]', () => {
    expect(tok.kind).toBe('bert');
    const ids = tok.encode('A small RED circle zebra');
    expect(ids).toEqual([vocab['[CLS]'], vocab['a'], vocab['small'], vocab['red'], vocab['circle'], vocab['[UNK]'], vocab['[SEP]']]);
  });

  test('appends [DEC] after the vocabulary, as LAVIS init_tokenizer does', () => {
    const size = Object.keys(vocab).length;
    expect(tok.decTokenId).toBe(size);
    expect(tok.vocabSize).toBe(size + 1);
  });

  test('pads to maxLength and truncates keeping [SEP]', () => {
    const t = CaptionTokenizer.fromFile(join(dir, 'tokenizer.json'), { maxLength: 6 });
    const b = t.encodeBatch(['a red circle', 'a small red circle above a large blue square']);
    expect(b.seqLength).toBe(6);
    expect(Array.from(b.inputIds.slice(0, 6))).toEqual([vocab['[CLS]'], vocab['a'], vocab['red'], vocab['circle'], vocab['[SEP]'], vocab['[PAD]']]);
    expect(Array.from(b.attentionMask.slice(0, 6))).toEqual([1, 1, 1, 1, 1, 0]);
    expect(Array.from(b.inputIds.slice(6))).toEqual([vocab['[CLS]'], vocab['a'], vocab['small'], vocab['red'], vocab['circle'], vocab['[SEP]']]);
    expect(Array.from(b.attentionMask.slice(6))).toEqual([1, 1, 1, 1, 1, 1]);
    expect(t.decode(b.inputIds.slice(0, 6))).toBe('a red circle');
  });

  test('rejects a tokenizer without its special tokens, naming the token', () => {
    const bad = structuredClone(json) as { model: { vocab: Record<string, number> }; added_tokens: Array<{ content: string }> };
    delete bad.model.vocab['[SEP]'];
    bad.added_tokens = bad.added_tokens.filter((t) => t.content !== '[SEP]');
    expect(() => new CaptionTokenizer(bad)).toThrow(/\[SEP\]/);
    expect(() => new CaptionTokenizer({ model: { type: 'Unigram' } })).toThrow(DatasetError);
  });
});

describe('opt (GPT-2 byte-level BPE) tokenizer', () => {
  // A tiny GPT-2-style tokenizer.json: byte-level pre-tokenizer (space -> Ġ, newline -> Ċ) and three merges.
  const vocab: Record<string, number> = { '<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3, a: 4, r: 5, e: 6, d: 7, Ġ: 8, Ċ: 9, re: 10, red: 11, Ġred: 12 };
  const json = {
    version: '1.0',
    added_tokens: ['<s>', '<pad>', '</s>', '<unk>'].map((content) => ({ id: vocab[content], content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges: ['r e', 're d', 'Ġ red'] },
  };
  const tok = new CaptionTokenizer(json, {});

  test('caption + "\\n" with BOS </s> first, merges applied', () => {
    expect(tok.kind).toBe('opt');
    expect(tok.encode('a red')).toEqual([2, 4, 12, 9]);
    expect(tok.encode('red a')).toEqual([2, 11, 8, 4, 9]);
  });

  test('pads with <pad> to the longest caption of the batch', () => {
    const b = tok.encodeBatch(['a', 'a red']);
    expect(b.seqLength).toBe(4);
    expect(Array.from(b.inputIds)).toEqual([2, 4, 9, 1, 2, 4, 12, 9]);
    expect(Array.from(b.attentionMask)).toEqual([1, 1, 1, 0, 1, 1, 1, 1]);
  });

  test('newlineTokenId: the token of "\\n" (GPT-2 style, no prefix space)', () => {
    expect(tok.newlineTokenId).toBe(9);
  });
});

describe('the synthetic dataset\'s OPT-style tokenizer (byteLevelBpeTokenizerJson)', () => {
  const words = ['a', 'small', 'red', 'circle', 'above', 'large', 'blue', 'square', '?'];
  const tok = new CaptionTokenizer(byteLevelBpeTokenizerJson(words), {}, { maxLength: 32 });

  test('newlineTokenId is the "\\n" that ends every caption, not the prefix space before it (generation stops on it)', () => {
    const nl = tok.newlineTokenId!;
    expect(tok.decode([nl])).toBe('\n');
    expect(tok.encode('a red circle').at(-1)).toBe(nl);
    // "\n" alone encodes as [" ", "\n"] with this tokenizer's prefix space: its first token is the space.
    expect(tok.encodePrompt('\n').slice(1)).toEqual([tok.encodePrompt(' ')[1], nl]);
  });

  test('OPT\'s special ids, and every word one token', () => {
    expect(tok.kind).toBe('opt');
    expect([tok.bosTokenId, tok.padTokenId]).toEqual([2, 1]);
    const ids = tok.encode('a small red circle above a large blue square');
    // BOS, 9 words, "\n".
    expect(ids).toHaveLength(11);
    expect(ids[0]).toBe(2);
    expect(new Set(ids.slice(1, -1)).size).toBe(8); // "a" twice
    expect(tok.decode(ids)).toBe(' a small red circle above a large blue square\n');
  });

  test('a string outside the word list still has a segmentation (byte symbols), and decodes back', () => {
    const ids = tok.encode('zebra ünïcode');
    expect(ids.every((id) => id >= 0 && id < tok.vocabSize)).toBe(true);
    expect(tok.decode(ids)).toBe(' zebra ünïcode\n');
  });
});
