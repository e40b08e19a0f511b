/**
 * BLIP-2's AdamW parameter groups, as LAVIS builds them (lavis/runners/runner_base.py `optimizer`):
 *
 *   if p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n: no decay   (older LAVIS revisions)
 *   if p.ndim == 1 or n.endswith(".bias"): no decay                     (the Blip2Base `get_optimizer_params` rule)
 *
 * The project follows the rule in ../shared/docs/blip2-spec.md §8: weight decay on every parameter except the 1-D
 * ones and those named `*.bias`. So the 0-d `temp` and the 3-D `query_tokens` ARE decayed, while LayerNorm weights
 * (1-D) are not.
 */

/** A trainable parameter as the optimiser sees it: its checkpoint name and shape. */
export interface ParamSpec {
  name: string;
  shape: readonly number[];
}

/** Whether AdamW's decoupled weight decay applies to this parameter (BLIP-2 rule: not 1-D, not `*.bias`). */
export function isDecayed(name: string, shape: readonly number[]): boolean {
  return shape.length !== 1 && !name.endsWith('.bias');
}

export interface ParamGroups {
  /** Names that get weight decay. */
  decay: string[];
  /** Names that get none. */
  noDecay: string[];
}

/** Splits parameters into BLIP-2's two groups, keeping the input order inside each. */
export function blip2ParamGroups(params: readonly ParamSpec[]): ParamGroups {
  const decay: string[] = [];
  const noDecay: string[] = [];
  for (const p of params) (isDecayed(p.name, p.shape) ? decay : noDecay).push(p.name);
  return { decay, noDecay };
}
