/**
 * BLIP's caption cleaning, as LAVIS `BlipCaptionProcessor.pre_caption` (lavis/processors/blip_processors.py):
 * lower-case, replace each of `.!"()*#:;~` by a space, collapse runs of spaces, strip a trailing newline and
 * surrounding spaces, keep at most `maxWords` words (50 in BLIP-2's configs).
 */
export function preCaption(caption: string, maxWords = 50): string {
  let c = caption.toLowerCase().replace(/([.!"()*#:;~])/g, ' ');
  c = c.replace(/\s{2,}/g, ' ');
  c = c.replace(/\n+$/, '');
  c = c.trim();
  const words = c.split(' ');
  if (words.length > maxWords) c = words.slice(0, maxWords).join(' ');
  return c;
}
