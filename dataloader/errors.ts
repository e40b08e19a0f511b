// The dataloader's errors (bad samples, descriptors, datasets) and the reasons a sample is skipped.
import { Blip2Error } from '../common';

/** Why a sample was skipped; the `reason` label of `blip2_trainer_data_samples_skipped_total`. */
export type SkipReason =
  | 'corrupt_image'
  | 'missing_image'
  | 'missing_caption'
  | 'caption_too_long'
  | 'bad_manifest_line'
  | 'truncated_tar';

/**
 * One sample cannot be used (bad image, caption, manifest line, truncated tar). The reader skips it, counts it and
 * logs it with its shard and key; the shard's other samples are used. Never retried.
 */
export class BadSampleError extends Blip2Error {
  constructor(
    readonly reason: SkipReason,
    readonly shard: string,
    readonly key: string,
    detail: string,
  ) {
    super(`${reason} in shard ${shard}, sample ${key}: ${detail}`);
  }
}

/** A shard descriptor that does not parse or breaks a rule: terminated on the stream, never redelivered. */
export class DescriptorError extends Blip2Error {}

/** A dataset, index or tokenizer file that cannot be used at all (a whole-job configuration error). */
export class DatasetError extends Blip2Error {}
