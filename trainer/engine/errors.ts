/**
 * The engine's errors, each a `Blip2Error` saying what the caller should do about it.
 */
import { Blip2Error } from '../../common';

/** Bad engine options (job config `engine.*` or code): the configuration is wrong; nothing was started. Fix it. */
export class EngineOptionsError extends Blip2Error {}

/**
 * The matmul asked for (`matmul: 'openblas'`) cannot be had: a setup error, not a reason to fall back. Build the
 * addon (`npm run build:native`) or ask for `auto` / `xnnpack`.
 */
export class MatMulUnavailableError extends Blip2Error {}

/**
 * A backend could not be started, or none could. A wasm failure makes the engine try the next backend (logged);
 * when none is left, the process cannot compute: check the tfjs install (`npm ci`) or ask for `engine.backend: cpu`.
 */
export class EngineStartError extends Blip2Error {}

/**
 * The installed tfjs is not the one the engine's kernels and shims were written against (they use its internals):
 * install the version package.json pins (`npm ci`).
 */
export class TfjsVersionError extends Blip2Error {}

/**
 * A kernel was handed inputs it cannot compute (dtype, rank, shapes, attributes): a bug in the calling code, which
 * must pass what the message names. Nothing was computed.
 */
export class KernelInputError extends Blip2Error {}

/**
 * A kernel or gradient the computation needs exists on no registered backend (e.g. the cpu backend that a wasm
 * fallback runs on is not loaded): import the backend, or avoid the op.
 */
export class KernelUnavailableError extends Blip2Error {}

/**
 * The backward pass cannot be computed: `f` returned no tensor, an op on the path has no gradient, or a gradient
 * came back with the wrong dtype or shape. A bug in the differentiated function or an op's gradient definition.
 */
export class GradientError extends Blip2Error {}
