// The dataloader's errors (bad samples, descriptors, datasets) and the reasons a sample is skipped.
import { Blip2Error } from '../common';

/** Why a sample was skipped; the `reason` label of `blip2_trainer_data_samples_skipped_total`. */
export type SkipReason =
  | 'corrupt_image'
  | 'unsupported_image'
  | 'missing_image'
  | 'multiple_images'
  | 'missing_caption'
  | 'caption_too_long'
  | 'bad_manifest_line'
  | 'truncated_tar';

/** Every reason, in the order reports list them. */
export const SKIP_REASONS: readonly SkipReason[] = [
  'corrupt_image', 'unsupported_image', 'missing_image', 'multiple_images', 'missing_caption', 'caption_too_long',
  'bad_manifest_line', 'truncated_tar',
];

/** A message on one line: decoders' messages carry newlines, and a log record must stay one line. */
export function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' | ').trim();
}

/**
 * One sample cannot be used (bad image, caption, manifest line, truncated tar). The reader skips it, counts it and
 * logs it with its shard and key; the shard's other samples are used. Never retried. `samples` is how many samples
 * it stands for: 1, or for a truncated tar every sample of the range that cannot be read.
 */
export class BadSampleError extends Blip2Error {
  constructor(
    readonly reason: SkipReason,
    readonly shard: string,
    readonly key: string,
    detail: string,
    readonly samples = 1,
  ) {
    super(`${reason} in shard ${shard}, sample ${key}: ${oneLine(detail)}`);
  }
}

/** A shard descriptor that does not parse or breaks a rule: terminated on the stream, never redelivered. */
export class DescriptorError extends Blip2Error {}

/** A dataset, index or tokenizer file that cannot be used at all (a whole-job configuration error). */
export class DatasetError extends Blip2Error {}
