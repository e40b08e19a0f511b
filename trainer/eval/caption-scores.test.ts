// COCO caption scores against the reference implementation's figures: corpus BLEU-1..4 (closest reference length)
// and CIDEr-D (σ 6, clipping, ×10, df from the references), the PTB tokenisation, and the COCO file handling.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { UsageError } from '../../common';
import { ciderD, cocoTokenize, corpusBleu, ptbTokens, scoreCaptionFiles } from '.';

// Every figure is a float64 sum of at most a few hundred terms of size ≤ 10, so the summation order (ours against
// numpy's) moves it by well under 1e-12; 12 digits leave room and still catch any change of the arithmetic.
const DIGITS = 12;

const items = (pairs: Array<[string, string[]]>) => pairs.map(([hypothesis, references]) => ({ hypothesis, references }));

describe('CIDEr-D', () => {
  test('a published figure of the reference CiderScorer: 2.5759014911864084 on three untokenised sentence pairs', () => {
    // SummEval's test of its copy of pycocoevalcap's CiderScorer (CiderMetric(tokenize=False).evaluate_batch(CANDS, REFS)):
    // whitespace split, case kept, one reference each.
    const r = ciderD(items([
      ['28-year-old chef found dead in San Francisco mall', ['28-Year-Old Chef Found Dead at San Francisco Mall']],
      ['A 28-year-old chef who recently moved to San Francisco was found dead in the staircase of a local shopping center.',
        ['A 28-year-old chef who had recently moved to San Francisco was found dead in the stairwell of a local mall this week.']],
      ['The victim\'s brother said he cannot imagine anyone who would want to harm him,"Finally, it went uphill again at him."',
        ['But the victim\'s brother says he can\'t think of anyone who would want to hurt him, saying, "Things were finally going well for him."']],
    ]));
    expect(r.score).toBeCloseTo(2.5759014911864084, DIGITS);
  });

  test('document frequencies come from the evaluated references: n-grams every image has weigh nothing', () => {
    // Both images share every reference n-gram: idf = ln 2 − ln 2 = 0 for all of them, so the score is 0 even for an
    // exact match, and no division by a zero norm happens (the pip release's guard).
    const r = ciderD(items([['a cat sleeping', ['cat sleeps', 'a cat is sleeping']], ['a cat sleeping', ['a cat is sleeping', 'cat sleeps']]]));
    expect(r.score).toBe(0);
  });

  test('a caption equal to every reference of its image scores 10; one with no shared n-gram scores 0', () => {
    const r = ciderD(items([['hello world good bye', ['hello world good bye']], ['this is perfect test', ['this is perfect test', 'this is perfect test']]]));
    expect(r.score).toBeCloseTo(10, DIGITS);
    const w = ciderD(items([['how are you today', ['hello world good bye']], ['only wrong words here', ['this is perfect test', 'this is perfect test']]]));
    expect(w.score).toBe(0);
  });
});

// A COCO-like set (already tokenised), several references per image; the expected figures were derived with the
// arithmetic of pycocoevalcap's BleuScorer and CiderScorer (a transcription that reproduces the published CIDEr
// figure above to the last digit), since no published figure exists for it.
const COCO_SET = items([
  ['a man riding a horse on a beach', ['a man rides a horse along the beach', 'a person on a horse at the beach near the water', 'man riding horse']],
  ['two dogs playing in the snow', ['two dogs play in the snow', 'a pair of dogs running through snow together', 'dogs in snow']],
  ['a plate of food', ['a plate with a sandwich and fries on it', 'a white plate of food on a wooden table']],
  ['a red bus', ['a red double decker bus driving down a street', 'red bus']],
  ['a cat sleeping', ['cat sleeps', 'a cat is sleeping']],
]);

describe('corpus BLEU', () => {
  test('BLEU-1..4 and CIDEr-D of a COCO-like set equal the reference arithmetic', () => {
    const b = corpusBleu(COCO_SET).bleu;
    const expected = [0.8089554939684661, 0.698897979527031, 0.3948943377048176, 4.9571076464971165e-05];
    b.forEach((v, k) => expect(v).toBeCloseTo(expected[k]!, DIGITS));
    const c = ciderD(COCO_SET);
    expect(c.score).toBeCloseTo(2.0953528486796147, DIGITS);
    const per = [1.8521606954127192, 2.208888032052685, 1.5902736871131595, 2.699247245402065, 2.1261945834174445];
    c.perImage.forEach((v, i) => expect(v).toBeCloseTo(per[i]!, DIGITS));
  });

  test('the brevity penalty takes the closest reference length, the shorter one on a tie', () => {
    // Test length 3 against references of 2 and 4 words: a tie, so r = 2 per caption; c = 6 > r = 4, no penalty.
    const tie = corpusBleu(items([['a cat sleeping', ['cat sleeps', 'a cat is sleeping']], ['a cat sleeping', ['a cat is sleeping', 'cat sleeps']]]));
    expect(tie.referenceLength).toBe(4);
    expect(tie.bleu[0]).toBeCloseTo(0.9999999998333334, DIGITS);
    // A short caption: c = 3, closest r = 2 (of 9 and 2) -> no penalty; against only the 9-word reference,
    // BLEU-1 = (3/3) · exp(1 − 1/ratio), ratio = c/r with the reference's guards, (3 + 1e-15) / (9 + 1e-9).
    const short = corpusBleu(items([['a red bus', ['a red double decker bus driving down a street']]]));
    expect(short.referenceLength).toBe(9);
    const ratio = (3 + 1e-15) / (9 + 1e-9);
    expect(short.bleu[0]).toBeCloseTo(((3 + 1e-15) / (3 + 1e-9)) * Math.exp(1 - 1 / ratio), DIGITS);
  });

  test('clipping: a repeated word counts at most as often as in one reference (the BLEU paper\'s example)', () => {
    const r = corpusBleu(items([['the the the the the the the', ['the cat is on the mat', 'there is a cat on the mat']]]));
    // 2 of 7 unigrams count. c = 7 and the closest r = 7, yet the reference's guards make the ratio
    // (7 + 1e-15) / (7 + 1e-9) < 1, so a penalty of exp(1 − 1/ratio) ≈ 1 − 1.4e-10 applies even at equal lengths.
    const ratio = (7 + 1e-15) / (7 + 1e-9);
    expect(r.bleu[0]).toBeCloseTo(((2 + 1e-15) / (7 + 1e-9)) * Math.exp(1 - 1 / ratio), 15);
    expect(r.bleu[0]).toBeLessThan((2 + 1e-15) / (7 + 1e-9));
  });
});

describe('PTB tokenisation as the COCO caption evaluation applies it', () => {
  test.each([
    ['A man riding a horse.', 'a man riding a horse'],
    ['Two dogs, playing in the snow!', 'two dogs playing in the snow'],
    ["A man's dog doesn't swim.", "a man 's dog does n't swim"],
    ["The dogs' bowls can't hold it", 'the dogs bowls ca n\'t hold it'],
    ['He said "hello" to me', 'he said hello to me'],
    ['A black-and-white photo', 'a black-and-white photo'],
    ['Over 1,000 people at 10:30 and 3.5 km', 'over 1,000 people at 10:30 and 3.5 km'],
    ['A man on St. Patrick\'s day in the U.S.', 'a man on st. patrick \'s day in the u.s.'],
    ['Wait... what -- really?', 'wait what really'],
    ['A dog (brown) and a cat', 'a dog -lrb- brown -rrb- and a cat'],
    ['Cats and/or dogs', 'cats and\\/or dogs'],
    ['I cannot see it, gonna go', 'i cannot see it gonna go'],
    ['A  sign\nthat reads:  STOP', 'a sign that reads stop'],
    ['\u201CCurly\u201D quotes\u2019 test', 'curly quotes test'],
    ['A man - in a hat', 'a man in a hat'],
    ['Grey cat, a grey colour harbour, favourite centre programmes', 'grey cat a gray color harbor favorite center programs'],
    ['Hello...world, dog,cat ... (x)', 'hello world dog cat -lrb- x -rrb-'],
    ["It's o'clock; rock'n'roll in the '90s: $5, 50%", "it 's o'clock rock'n'roll in the '90s $ 5 50 %"],
  ])('%j -> %j', (caption, expected) => {
    expect(cocoTokenize(caption)).toBe(expected);
  });

  test('the tokens before the punctuation filter keep their PTB forms', () => {
    expect(ptbTokens('"Hi," she said.')).toEqual(['``', 'Hi', ',', "''", 'she', 'said', '.']);
    expect(ptbTokens("''Wait...'' -- no")).toEqual(['``', 'Wait', '...', "''", '--', 'no']);
  });
});

describe('COCO files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'blip2-caption-eval-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, value: unknown) => {
    const p = join(dir, name);
    writeFileSync(p, typeof value === 'string' ? value : JSON.stringify(value));
    return p;
  };
  const refs = write('captions.json', {
    images: [{ id: 1 }, { id: 2 }],
    annotations: [
      { image_id: 1, id: 10, caption: 'A man riding a horse on a beach.' },
      { image_id: 1, id: 11, caption: 'A person on a horse, at the beach.' },
      { image_id: 2, id: 12, caption: 'Two dogs play in the snow.' },
    ],
  });

  test('results are PTB-tokenised with their references and scored', () => {
    const preds = write('results.json', [{ image_id: 2, caption: 'Two dogs play in the snow' }, { image_id: 1, caption: 'A man riding a horse on a beach' }]);
    const s = scoreCaptionFiles(preds, refs);
    const expected = corpusBleu(items([
      ['a man riding a horse on a beach', ['a man riding a horse on a beach', 'a person on a horse at the beach']],
      ['two dogs play in the snow', ['two dogs play in the snow']],
    ]));
    expect(s.images).toBe(2);
    expect(s.Bleu_4).toBeCloseTo(expected.bleu[3]!, DIGITS);
    expect(s.Bleu_1).toBeCloseTo(1, 8);
    expect(s.CIDEr).toBeGreaterThan(0);
  });

  test('bad files are refused naming the file and what is wrong', () => {
    const dup = write('dup.json', [{ image_id: 1, caption: 'a' }, { image_id: 1, caption: 'b' }, { image_id: 2, caption: 'c' }]);
    expect(() => scoreCaptionFiles(dup, refs)).toThrow(new UsageError(`${dup}: more than one caption for image_id 1 (the evaluation takes one per image)`));
    const missing = write('missing.json', [{ image_id: 1, caption: 'a' }]);
    expect(() => scoreCaptionFiles(missing, refs)).toThrow(`${missing}: no caption for 1 of the 2 images of ${refs} (image_id 2)`);
    const unknown = write('unknown.json', [{ image_id: 1, caption: 'a' }, { image_id: 2, caption: 'b' }, { image_id: 3, caption: 'c' }]);
    expect(() => scoreCaptionFiles(unknown, refs)).toThrow(`${unknown}: image_id 3 is not in ${refs}`);
    const notJson = write('bad.json', '{oops');
    expect(() => scoreCaptionFiles(notJson, refs)).toThrow(/bad\.json: not valid JSON .*expected a COCO results list/);
    const noCaption = write('nocap.json', [{ image_id: 1 }]);
    expect(() => scoreCaptionFiles(noCaption, refs)).toThrow(`${noCaption}: entry 0 (image_id 1) has no caption string`);
    expect(() => scoreCaptionFiles(refs, refs)).toThrow(/captions\.json: expected a COCO results list/);
    expect(() => scoreCaptionFiles(missing, missing)).toThrow(/missing\.json: expected a COCO captions file/);
  });
});
