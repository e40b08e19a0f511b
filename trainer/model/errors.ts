/**
 * The model's errors. Inputs that do not fit the model (shapes, indices, options) are the caller's to fix: nothing
 * is retried, and the message says what was expected.
 */
import { Blip2Error } from '../../common';

/** Model inputs or options that do not fit the configuration (a shape, an index, a missing parameter). */
export class ModelInputError extends Blip2Error {}
