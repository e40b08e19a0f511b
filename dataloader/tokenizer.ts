/**
 * Caption tokenizers loaded from Hugging Face `tokenizer.json` files with `@huggingface/tokenizers` (pure JS,
 * works offline from a local file).
 *
 * - `bert` (the Q-Former's, bert-base-uncased WordPiece): `[CLS] w.. [SEP]`, truncated and padded to `maxLength`
 *   (LAVIS `padding="max_length", truncation=True, max_length=32`); `[DEC]` is appended to the vocabulary as in
 *   LAVIS `Blip2Base.init_tokenizer` (`add_special_tokens({"bos_token": "[DEC]"})`, id = vocabulary size, 30522
 *   for bert-base-uncased) unless the file already has it.
 * - `opt` (GPT-2 byte-level BPE): `caption + "\n"`, BOS `</s>` first, truncated to `maxLength`, padded with `<pad>`
 *   to the longest caption of the batch (LAVIS blip2_opt.py `padding="longest"`).
 */
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { DatasetError } from './errors';

export type TokenizerKind = 'bert' | 'opt';

export interface CaptionTokenizerOptions {
  /** Which convention to apply. Default: `bert` for a WordPiece model, `opt` for a BPE model. */
  kind?: TokenizerKind;
  /** Tokens per caption after truncation, special tokens included. Default 32 (LAVIS `max_txt_len`). */
  maxLength?: number;
}

/** A batch of token ids, row-major. */
export interface TokenizedBatch {
  /** [B, T] token ids. */
  inputIds: Int32Array;
  /** [B, T] 1 for a real token, 0 for padding. */
  attentionMask: Int32Array;
  batchSize: number;
  seqLength: number;
}

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number> | unknown[] };
  added_tokens?: Array<{ id: number; content: string }>;
}

export class CaptionTokenizer {
  readonly kind: TokenizerKind;
  readonly maxLength: number;
  /** Number of ids, including `[DEC]` when it was appended. */
  readonly vocabSize: number;
  readonly padTokenId: number;
  /** bert: `[CLS]`; opt: BOS `</s>`. */
  readonly bosTokenId: number;
  /** bert: `[SEP]`; opt: undefined (the caption ends with "\n"). */
  readonly sepTokenId: number | undefined;
  /** bert only: `[DEC]`, which replaces `[CLS]` for the ITG objective. */
  readonly decTokenId: number | undefined;
  private readonly tok: Tokenizer;

  /** Loads `tokenizer.json` (and `tokenizer_config.json` beside it, when present). */
  static fromFile(path: string, options: CaptionTokenizerOptions = {}): CaptionTokenizer {
    let json: TokenizerJson;
    try {
      json = JSON.parse(readFileSync(path, 'utf8')) as TokenizerJson;
    } catch (e) {
      throw new DatasetError(`cannot read tokenizer ${path}: ${(e as Error).message}`);
    }
    const configPath = join(dirname(path), 'tokenizer_config.json');
    const config = existsSync(configPath) ? (JSON.parse(readFileSync(configPath, 'utf8')) as object) : {};
    return new CaptionTokenizer(json, config, options, path);
  }

  constructor(json: object, config: object = {}, options: CaptionTokenizerOptions = {}, source = 'tokenizer.json') {
    const tj = json as TokenizerJson;
    const modelType = tj.model?.type;
    if (modelType !== 'WordPiece' && modelType !== 'BPE') {
      throw new DatasetError(`${source}: model.type ${JSON.stringify(modelType)} is not supported (WordPiece or BPE)`);
    }
    this.kind = options.kind ?? (modelType === 'WordPiece' ? 'bert' : 'opt');
    this.maxLength = options.maxLength ?? 32;
    if (!Number.isInteger(this.maxLength) || this.maxLength < 3) {
      throw new DatasetError(`tokenizer maxLength must be an integer >= 3, got ${this.maxLength}`);
    }
    this.tok = new Tokenizer(json, config);
    const vocab = this.tok.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) maxId = Math.max(maxId, id);
    const need = (token: string): number => {
      const id = this.tok.token_to_id(token);
      if (id === undefined) throw new DatasetError(`${source}: special token ${token} is missing (rule: a ${this.kind} tokenizer has it)`);
      return id;
    };
    if (this.kind === 'bert') {
      this.padTokenId = need('[PAD]');
      this.bosTokenId = need('[CLS]');
      this.sepTokenId = need('[SEP]');
      const dec = this.tok.token_to_id('[DEC]');
      this.decTokenId = dec ?? maxId + 1;
      this.vocabSize = Math.max(maxId, this.decTokenId) + 1;
    } else {
      this.bosTokenId = need('</s>');
      this.padTokenId = this.tok.token_to_id('<pad>') ?? this.bosTokenId;
      this.sepTokenId = undefined;
      this.decTokenId = undefined;
      this.vocabSize = maxId + 1;
    }
  }

  /** Token ids of one caption, special tokens included, truncated to `maxLength`, no padding. */
  encode(caption: string): number[] {
    if (this.kind === 'bert') {
      const ids = this.tok.encode(caption, { add_special_tokens: false }).ids;
      const body = ids.slice(0, this.maxLength - 2);
      return [this.bosTokenId, ...body, this.sepTokenId!];
    }
    const ids = this.tok.encode(caption + '\n', { add_special_tokens: false }).ids;
    return [this.bosTokenId, ...ids.slice(0, this.maxLength - 1)];
  }

  /**
   * Token ids of a text prompt as the OPT tokenizer makes them for generation: BOS, then the text, no "\n" and no
   * truncation (LAVIS tokenizes its caption and VQA prompts this way). Only for the `opt` kind.
   */
  encodePrompt(text: string): number[] {
    if (this.kind !== 'opt') throw new Error(`encodePrompt: a ${this.kind} tokenizer has no generation prompt`);
    return [this.bosTokenId, ...this.tok.encode(text, { add_special_tokens: false }).ids];
  }

  /**
   * The id of the token "\n" (opt kind: what ends a caption, and a generation), or undefined when the vocabulary
   * has none. The last token of "\n" encoded alone: a tokenizer that adds a prefix space (as the synthetic data's
   * does) encodes it as [" ", "\n"], so its first token is not the one.
   */
  get newlineTokenId(): number | undefined {
    const ids = this.tok.encode('\n', { add_special_tokens: false }).ids;
    const last = ids[ids.length - 1];
    return last !== undefined && this.tok.decode([last], { skip_special_tokens: false }) === '\n' ? last : undefined;
  }

  /** Tokenizes and pads a batch: bert to `maxLength`, opt to the longest caption. */
  encodeBatch(captions: readonly string[]): TokenizedBatch {
    const rows = captions.map((c) => this.encode(c));
    const seqLength = this.kind === 'bert' ? this.maxLength : Math.max(1, ...rows.map((r) => r.length));
    const inputIds = new Int32Array(rows.length * seqLength).fill(this.padTokenId);
    const attentionMask = new Int32Array(rows.length * seqLength);
    rows.forEach((r, b) => {
      inputIds.set(r, b * seqLength);
      attentionMask.fill(1, b * seqLength, b * seqLength + r.length);
    });
    return { inputIds, attentionMask, batchSize: rows.length, seqLength };
  }

  /** Text of the given ids, special tokens and padding dropped ('' for none: a caption ended at once). */
  decode(ids: ArrayLike<number>): string {
    const keep = Array.from(ids).filter((id) => id !== this.decTokenId && id < this.vocabSize);
    // @huggingface/tokenizers refuses an empty list.
    return keep.length ? this.tok.decode(keep, { skip_special_tokens: true }) : '';
  }
}

/** A BERT-style (WordPiece, lower-case) tokenizer.json for a closed word list, as `blip2 data synth` writes it. */
export function bertTokenizerJson(words: readonly string[]): object {
  const specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
  const vocab: Record<string, number> = {};
  for (const w of [...specials, ...words]) if (!(w in vocab)) vocab[w] = Object.keys(vocab).length;
  const special = (content: string) => ({
    id: vocab[content], content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map(special),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } }, { SpecialToken: { id: '[SEP]', type_id: 1 } },
      ],
      special_tokens: {
        '[CLS]': { id: '[CLS]', ids: [vocab['[CLS]']], tokens: ['[CLS]'] },
        '[SEP]': { id: '[SEP]', ids: [vocab['[SEP]']], tokens: ['[SEP]'] },
      },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
  };
}

/** GPT-2's byte-to-character table (`bytes_to_unicode`): every byte as a printable character, space = "Ġ", "\n" = "Ċ". */
export function gpt2ByteChars(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const out = new Array<string>(256);
  for (const b of printable) out[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (out[b] === undefined) out[b] = String.fromCodePoint(256 + n++);
  return out;
}

/**
 * An OPT-style (GPT-2 byte-level BPE) tokenizer.json for a closed word list, as `blip2 data synth` writes it for the
 * stage-2 language model: OPT's special tokens (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3), the 256 byte symbols (so
 * every string has a segmentation), and merges that make each word one token. Unlike OPT's own tokenizer it adds a
 * space before the first word (`add_prefix_space`), so that every word is "Ġword" and every merge starts with "Ġ":
 * no merge can then fire inside a word before the chain from its start, and a word of the list is always one token.
 */
export function byteLevelBpeTokenizerJson(words: readonly string[]): object {
  const byteChars = gpt2ByteChars();
  const specials = ['<s>', '<pad>', '</s>', '<unk>'];
  const vocab: Record<string, number> = {};
  const add = (t: string) => {
    if (!(t in vocab)) vocab[t] = Object.keys(vocab).length;
  };
  for (const t of [...specials, ...byteChars]) add(t);
  const merges: string[] = [];
  const seen = new Set<string>();
  const utf8 = new TextEncoder();
  for (const w of words) {
    for (const form of [` ${w}`]) {
      const symbols = Array.from(utf8.encode(form), (b) => byteChars[b]!);
      let acc = symbols[0]!;
      for (const s of symbols.slice(1)) {
        const m = `${acc} ${s}`;
        if (!seen.has(m)) {
          seen.add(m);
          merges.push(m);
        }
        acc += s;
        add(acc);
      }
    }
  }
  const special = (content: string) => ({
    id: vocab[content], content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true,
  });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map(special),
    normalizer: null,
    pre_tokenizer: { ...byteLevel, add_prefix_space: true },
    post_processor: byteLevel,
    decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}
