/**
 * The COCO caption evaluation's text preparation (pycocoevalcap `PTBTokenizer`): Stanford's PTB tokenizer run with
 * `-preserveLines -lowerCase`, then the tokens in its PUNCTUATIONS list dropped. The Java tokenizer is not run here;
 * this is its behaviour on caption text, rule by rule:
 * - whitespace splits; tokens are lower-cased after tokenising (so `-LRB-` comes out as `-lrb-`, which the
 *   case-sensitive punctuation filter keeps, while `(` is split off as a token of its own);
 * - `.` `,` `;` `:` `!` `?` `...` `--` split from words; a comma or colon between digits (`1,000`, `10:30`) and a
 *   period inside a number or an abbreviation (`3.5`, `u.s.`, `mr.`, `e.g.`) stay in the word;
 * - clitics split: `n't`, `'s`, `'m`, `'d`, `'ll`, `'re`, `'ve` (`don't` -> `do n't`, `can't` -> `ca n't`,
 *   `man's` -> `man 's`); `cannot`, `gonna`, `wanna` stay whole (the tokenizer's default `keepAssimilations`);
 * - quotes become `` `` `` / `''` (double) and `` ` `` / `'` (single), curly quotes included, and are dropped;
 * - brackets become `-LRB-` `-RRB-` `-LSB-` `-RSB-` `-LCB-` `-RCB-`; `/` and `*` are escaped (`and\/or`);
 * - hyphenated words (`black-and-white`) stay one token; a lone `-` is dropped;
 * - British spellings become American before lower-casing, as the tokenizer's `americanize` option (on by default
 *   in the 3.4.1 release the evaluation runs) does, for lower-case words only (`a grey cat` -> `gray`, but `Grey
 *   cat` -> `grey`): words of 3+ letters then `our`/`ours` -> `or`/`ors` (`colour`, `harbours`), `programme(s)`,
 *   and a word list (`grey`, `centre`, `fibre`, `favourite`, `kerb`, `labelled`, …; `AMERICAN` below). Stanford's
 *   list is longer than the one here, which holds the words of it that caption text is likely to meet.
 * The dropped tokens: '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;
 */

/** pycocoevalcap's PUNCTUATIONS: tokens removed after tokenising (compared case-sensitively, after lower-casing). */
export const PTB_PUNCTUATIONS: ReadonlySet<string> = new Set([
  "''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?', '!', ',', ':', '-', '--', '...', ';',
]);

/** British -> American spellings applied to lower-case words (a subset of Stanford's Americanize list). */
const AMERICAN: Record<string, string> = {
  analyse: 'analyze', analysed: 'analyzed', analysing: 'analyzing', cancelled: 'canceled', cancelling: 'canceling',
  centre: 'center', centres: 'centers', defence: 'defense', encyclopaedia: 'encyclopedia', fibre: 'fiber', fibres: 'fibers',
  grey: 'gray', kerb: 'curb', labelled: 'labeled', labelling: 'labeling', leant: 'leaned', learnt: 'learned',
  manoeuvre: 'maneuver', manoeuvres: 'maneuvers', meagre: 'meager', analogue: 'analog', analogues: 'analogs',
  ...Object.fromEntries(
    ['armoured', 'coloured', 'colouring', 'discoloured', 'discolouring', 'endeavoured', 'endeavouring', 'favoured', 'favouring',
      'favourite', 'favourites', 'flavoured', 'flavouring', 'honoured', 'honouring', 'honourable', 'humoured', 'humouring',
      'laboured', 'labouring'].map((w) => [w, w.replace('our', 'or')]),
  ),
};

/** Stanford's Americanize on one token: the word list, then `…our(s)` after 3+ letters and `programme(s)`. */
function americanize(word: string): string {
  const mapped = AMERICAN[word];
  if (mapped) return mapped;
  if (/^programmes?$/.test(word)) return word.replace('programme', 'program');
  const m = /^([a-z]{3,})our(s?)$/.exec(word);
  if (m && !/^(glam|det|dev)$/.test(m[1]!)) return `${m[1]}or${m[2]}`;
  return word;
}

/** Words whose final period belongs to them (PTBLexer's abbreviation lists, the ones caption text meets). */
const ABBREVIATIONS = new Set([
  'mr', 'mrs', 'ms', 'dr', 'st', 'jr', 'sr', 'prof', 'mt', 'ft', 'ave', 'blvd', 'rd', 'co', 'corp', 'inc', 'ltd',
  'vs', 'etc', 'no', 'jan', 'feb', 'mar', 'apr', 'jun', 'jul', 'aug', 'sep', 'sept', 'oct', 'nov', 'dec', 'gen',
  'gov', 'sen', 'rep', 'lt', 'col', 'capt', 'sgt',
]);

const BRACKETS: Record<string, string> = { '(': '-LRB-', ')': '-RRB-', '[': '-LSB-', ']': '-RSB-', '{': '-LCB-', '}': '-RCB-' };

/** A word whose final `.` stays with it: an abbreviation, letters with inner periods (`u.s.`), a single letter. */
function keepsPeriod(word: string): boolean {
  const w = word.toLowerCase();
  if (ABBREVIATIONS.has(w)) return true;
  if (/^([a-z]\.)+[a-z]$/i.test(word)) return true; // u.s. / e.g. / a.m.
  return /^[A-Z]$/.test(word); // an initial: "J."
}

/** Split clitics off a word without surrounding punctuation. */
function splitClitics(word: string): string[] {
  let m = /^(.+?)(n't)$/i.exec(word);
  if (m && m[1]!.length > 0) return [m[1]!, m[2]!];
  m = /^(.+?)('s|'m|'d|'ll|'re|'ve)$/i.exec(word);
  if (m && /[a-z0-9]$/i.test(m[1]!)) return [m[1]!, m[2]!];
  return [word];
}

/** Escape PTB3's `/` and `*`. */
const escapeWord = (w: string): string => w.replace(/([/*])/g, '\\$1');

/** One whitespace-free chunk to PTB tokens (original case). */
function tokenizeChunk(chunk: string): string[] {
  const lead: string[] = [];
  const trail: string[] = [];
  let s = chunk;
  // Leading punctuation.
  for (;;) {
    if (s === '...' || s === '--') break;
    if (s.startsWith('"') || s.startsWith('``') || (s.startsWith("''") && s.length > 2)) { lead.push('``'); s = s.slice(s.startsWith('"') ? 1 : 2); continue; }
    if (s.startsWith('`')) { lead.push('`'); s = s.slice(1); continue; }
    if (s.startsWith("'") && s.length > 1 && !/^'(\d\d?s?|s|m|d|ll|re|ve|t|n)\b/i.test(s)) { lead.push('`'); s = s.slice(1); continue; }
    const c = s[0];
    if (c !== undefined && c in BRACKETS) { lead.push(BRACKETS[c]!); s = s.slice(1); continue; }
    if (c === '$' || c === '#') { if (s.length > 1) { lead.push(c); s = s.slice(1); continue; } }
    break;
  }
  // Trailing punctuation.
  for (;;) {
    if (s.length === 0 || s === '...' || s === '--') break;
    if (s.endsWith('...') && s.length > 3) { trail.unshift('...'); s = s.slice(0, -3); continue; }
    if (s.endsWith("''") && s.length > 2) { trail.unshift("''"); s = s.slice(0, -2); continue; }
    const c = s[s.length - 1]!;
    const body = s.slice(0, -1);
    if (body.length === 0) break;
    if (c === '"') { trail.unshift("''"); s = body; continue; }
    if (c in BRACKETS) { trail.unshift(BRACKETS[c]!); s = body; continue; }
    if (c === ',' || c === ';' || c === ':' || c === '!' || c === '?' || c === '%') { trail.unshift(c); s = body; continue; }
    if (c === "'") { trail.unshift("'"); s = body; continue; }
    if (c === '.') {
      if (keepsPeriod(body) || /^([a-z]\.)+$/i.test(s)) break;
      trail.unshift('.'); s = body; continue;
    }
    break;
  }
  const middle: string[] = [];
  if (s.length > 0) {
    if (s === '...' || s === '--' || s === '-' || s === '.' || s === ',' || s === ';' || s === ':' || s === '!' || s === '?' || s === "'" || s === '&') {
      middle.push(s);
    } else if (/[^-]--[^-]/.test(s) || /.\.\.\../.test(s) || /[,;!?]/.test(s.replace(/(\d),(?=\d)/g, '$1')) || /(^|[^\d]):|:($|[^\d])/.test(s)) {
      // Inner punctuation that splits: `--`, commas and colons not between digits, `;` `!` `?`.
      for (const piece of s.split(/(--|\.\.\.|(?<!\d),|,(?!\d)|(?<!\d):|:(?!\d)|[;!?])/)) if (piece) middle.push(...tokenizeChunk(piece));
    } else {
      middle.push(...splitClitics(s));
    }
  }
  return [...lead, ...middle, ...trail];
}

/** PTB tokens of one caption, original case, punctuation kept (the Java tokenizer's output line). */
export function ptbTokens(caption: string): string[] {
  const text = caption
    .replace(/[\u2018\u201B]/g, '`').replace(/[\u2019]/g, "'")
    .replace(/[\u201C\u201F]/g, '``').replace(/[\u201D]/g, "''");
  const out: string[] = [];
  for (const chunk of text.split(/\s+/)) {
    if (!chunk) continue;
    for (const t of tokenizeChunk(chunk)) out.push(/^-[LR][RSC]B-$/.test(t) ? t : escapeWord(americanize(t)));
  }
  return out;
}

/**
 * A caption as the COCO caption evaluation scores it: PTB tokens, lower-cased, the PUNCTUATIONS removed, joined by
 * single spaces (`"A man's dog, running."` -> `"a man 's dog running"`).
 */
export function cocoTokenize(caption: string): string {
  return ptbTokens(caption.replace(/\n/g, ' '))
    .map((t) => t.toLowerCase())
    .filter((t) => !PTB_PUNCTUATIONS.has(t))
    .join(' ');
}
