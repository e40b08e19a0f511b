/**
 * VQAv2 accuracy as the official evaluation (VQA `vqaEval.py`, which LAVIS copies) computes it, quirks included:
 * - the predicted answer: newlines and tabs to spaces, trimmed, then `processPunctuation` and
 *   `processDigitArticle` (lower case, number words to digits, articles a/an/the dropped, contractions restored);
 * - the human answers get `processPunctuation` only, and only when they are not all the same string;
 * - per question, each of the n human answers is left out in turn and the prediction scores
 *   min(1, #matching among the others / 3); the question's accuracy is the mean (with 10 answers: 3 matches give
 *   0.9, 4 or more give 1);
 * - `processPunctuation` decides per mark from the unprocessed text: a mark next to a space (or any mark when a
 *   comma sits between digits) is deleted, otherwise replaced by a space; then every `.` not followed by a digit
 *   is removed, at most 32 of them (the reference passes re.UNICODE = 32 as `re.sub`'s count).
 */

const OFFICIAL_PUNCT = [';', ':', '/', "'", '[', ']', '"', '(', ')', '=', '+', '\\', '_', '>', '<', '@', '`', ',', '?'];

const NUMBER_WORDS: Record<string, string> = {
  none: '0', zero: '0', one: '1', two: '2', three: '3', four: '4', five: '5', six: '6', seven: '7', eight: '8', nine: '9', ten: '10',
};
const ARTICLES = new Set(['a', 'an', 'the']);

// The official contraction table (its keys and values mix ' and ’ exactly as the reference does).
const CONTRACTIONS: Record<string, string> = Object.fromEntries(
  (
    "aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn’t’ve|couldnt’ve couldn’t’ve|" +
    'didnt didn’t|doesnt doesn’t|dont don’t|hadnt hadn’t|hadnt’ve hadn’t’ve|hadn\'tve hadn’t’ve|hasnt hasn’t|havent haven’t|' +
    'hed he’d|hed’ve he’d’ve|he’dve he’d’ve|hes he’s|howd how’d|howll how’ll|hows how’s|Id’ve I’d’ve|I’dve I’d’ve|Im I’m|' +
    'Ive I’ve|isnt isn’t|itd it’d|itd’ve it’d’ve|it’dve it’d’ve|itll it’ll|let’s let’s|maam ma’am|mightnt mightn’t|' +
    'mightnt’ve mightn’t’ve|mightn’tve mightn’t’ve|mightve might’ve|mustnt mustn’t|mustve must’ve|neednt needn’t|notve not’ve|' +
    'oclock o’clock|oughtnt oughtn’t|ow’s’at ’ow’s’at|’ows’at ’ow’s’at|’ow’sat ’ow’s’at|shant shan’t|shed’ve she’d’ve|' +
    'she’dve she’d’ve|she’s she’s|shouldve should’ve|shouldnt shouldn’t|shouldnt’ve shouldn’t’ve|shouldn’tve shouldn’t’ve|' +
    'somebody’d somebodyd|somebodyd’ve somebody’d’ve|somebody’dve somebody’d’ve|somebodyll somebody’ll|somebodys somebody’s|' +
    'someoned someone’d|someoned’ve someone’d’ve|someone’dve someone’d’ve|someonell someone’ll|someones someone’s|' +
    'somethingd something’d|somethingd’ve something’d’ve|something’dve something’d’ve|somethingll something’ll|thats that’s|' +
    'thered there’d|thered’ve there’d’ve|there’dve there’d’ve|therere there’re|theres there’s|theyd they’d|theyd’ve they’d’ve|' +
    'they’dve they’d’ve|theyll they’ll|theyre they’re|theyve they’ve|twas ’twas|wasnt wasn’t|wed’ve we’d’ve|we’dve we’d’ve|' +
    "weve we've|werent weren’t|whatll what’ll|whatre what’re|whats what’s|whatve what’ve|whens when’s|whered where’d|" +
    "wheres where's|whereve where’ve|whod who’d|whod’ve who’d’ve|who’dve who’d’ve|wholl who’ll|whos who’s|whove who've|" +
    'whyll why’ll|whyre why’re|whys why’s|wont won’t|wouldve would’ve|wouldnt wouldn’t|wouldnt’ve wouldn’t’ve|' +
    'wouldn’tve wouldn’t’ve|yall y’all|yall’ll y’all’ll|y’allll y’all’ll|yall’d’ve y’all’d’ve|y’alld’ve y’all’d’ve|' +
    'y’all’dve y’all’d’ve|youd you’d|youd’ve you’d’ve|you’dve you’d’ve|youll you’ll|youre you’re|youve you’ve'
  ).split('|').map((pair) => pair.split(' ') as [string, string]),
);

const COMMA_BETWEEN_DIGITS = /(\d)(,)(\d)/;
const PERIOD_STRIP = /(?!<=\d)(\.)(?!\d)/g;

/** The official `processPunctuation`. */
export function processPunctuation(text: string): string {
  let out = text;
  const commaNumber = COMMA_BETWEEN_DIGITS.test(text);
  for (const p of OFFICIAL_PUNCT) {
    if (text.includes(`${p} `) || text.includes(` ${p}`) || commaNumber) out = out.split(p).join('');
    else out = out.split(p).join(' ');
  }
  let removed = 0;
  return out.replace(PERIOD_STRIP, (m) => (removed++ < 32 ? '' : m));
}

/** The official `processDigitArticle`: lower case, number words to digits, articles dropped, contractions. */
export function processDigitArticle(text: string): string {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean).map((w) => NUMBER_WORDS[w] ?? w).filter((w) => !ARTICLES.has(w));
  return words.map((w) => (Object.hasOwn(CONTRACTIONS, w) ? CONTRACTIONS[w]! : w)).join(' ');
}

/** A predicted answer as the evaluation compares it. */
export function normalizeVqaAnswer(answer: string): string {
  return processDigitArticle(processPunctuation(answer.replace(/\n/g, ' ').replace(/\t/g, ' ').trim()));
}

/** One question's accuracy in [0, 1]: the leave-one-out mean of min(1, matches among the other answers / 3). */
export function vqaAccuracy(prediction: string, humanAnswers: readonly string[]): number {
  if (humanAnswers.length === 0) throw new Error('vqaAccuracy: a question has no human answers');
  const res = normalizeVqaAnswer(prediction);
  const gts = new Set(humanAnswers).size > 1 ? humanAnswers.map(processPunctuation) : [...humanAnswers];
  let sum = 0;
  for (let left = 0; left < gts.length; left++) {
    let matching = 0;
    for (let j = 0; j < gts.length; j++) if (j !== left && gts[j] === res) matching++;
    sum += Math.min(1, matching / 3);
  }
  return sum / gts.length;
}

/** Mean accuracy over questions, in [0, 1] (the official `overall` is this × 100, rounded to 2 decimals). */
export function vqaOverall(items: ReadonlyArray<{ prediction: string; answers: readonly string[] }>): number {
  if (items.length === 0) return 0;
  return items.reduce((s, it) => s + vqaAccuracy(it.prediction, it.answers), 0) / items.length;
}
