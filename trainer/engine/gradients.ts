/**
 * Reverse-mode gradients that free memory as they go. tfjs-core 4.22's `engine.gradients` keeps every intermediate
 * gradient and every tensor the forward pass saved for backward alive until the whole backward pass ends (they are
 * released by the closing `tidy`): peak memory is the forward activations plus the gradient of every intermediate
 * tensor. On the wasm backend, whose heap is 4 GiB, that made a BERT-base Q-Former step run out of memory. Here a
 * tape node's saved tensors are disposed as soon as its gradient has been computed, and the gradient of a tensor as
 * soon as the node that produced it has consumed it — what PyTorch's autograd does — so memory falls during
 * backward instead of growing. Saved tensors of nodes that do not lie between `xs` and `y` are disposed before
 * backward starts. The walk itself (tape filtering, the order, accumulation by `add`) is the engine's, so the
 * numbers are the same to the bit.
 *
 * Uses the engine's tape internals (`state.activeTape`, `startTape`/`endTape`, `scopedRun`, node `saved`), all
 * present in tfjs-core 4.22 (pinned in package.json); `gradients.test.ts` checks them against `engine.gradients`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { GradientError } from './errors';

interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  saved?: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
}

interface EngineInternals {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  startTape(): void;
  endTape(): void;
  tidy<T extends tf.TensorContainer>(name: string | (() => T), fn?: () => T): T;
}

/** The nodes of `tape` on a path from some x to y, with inputs pruned to those that depend on x (tfjs-core's). */
function filterTape(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set<number>(xs.map((x) => x.id));
  const nodesFromX = new Set<number>();
  for (const node of tape) {
    for (const name in node.inputs) {
      if (fromX.has(node.inputs[name]!.id)) {
        for (const o of node.outputs) fromX.add(o.id);
        nodesFromX.add(node.id);
        break;
      }
    }
  }
  const toY = new Set<number>([y.id]);
  const nodesToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i]!;
    if (node.outputs.some((o) => toY.has(o.id))) {
      for (const name in node.inputs) toY.add(node.inputs[name]!.id);
      nodesToY.add(node.id);
    }
  }
  const filtered: TapeNode[] = [];
  for (const node of tape) {
    if (!nodesFromX.has(node.id) || !nodesToY.has(node.id)) continue;
    const inputs: Record<string, tf.Tensor> = {};
    for (const name in node.inputs) if (fromX.has(node.inputs[name]!.id)) inputs[name] = node.inputs[name]!;
    filtered.push({ ...node, inputs });
  }
  return filtered;
}

function disposeSaved(node: TapeNode): void {
  for (const t of node.saved ?? []) t.dispose();
}

/**
 * `engine.gradients(f, xs, undefined, true)` with early release: returns y = f() and dy/dx for each x (undefined
 * where y does not depend on x). Gradients are not kept beyond the call unless returned; nothing leaks.
 */
export function gradients(
  f: () => tf.Tensor,
  xs: tf.Tensor[],
  options: { /** Called after each tape node's gradient (for memory measurements). */ afterNode?: (remaining: number) => void } = {},
): { value: tf.Tensor; grads: (tf.Tensor | undefined)[] } {
  const engine = tf.engine() as unknown as EngineInternals;
  if (engine.state.gradientDepth !== 0) {
    // Higher-order gradients need the tape kept; the engine's own walk does that.
    const r = tf.engine().gradients(f, xs, undefined, true);
    return { value: r.value, grads: r.grads as (tf.Tensor | undefined)[] };
  }
  const y = engine.scopedRun(
    () => engine.startTape(),
    () => engine.endTape(),
    () => engine.tidy('forward', f),
  );
  if (!(y instanceof tf.Tensor)) throw new GradientError('gradients: f() must return a tensor');
  const tape = engine.state.activeTape ?? [];
  const filtered = filterTape(tape, xs, y);
  const onPath = new Set(filtered.map((n) => n.id));
  for (const node of tape) if (!onPath.has(node.id)) disposeSaved(node);
  const xIds = new Set(xs.map((x) => x.id));
  const grads = engine.tidy('backward', () => {
    const acc = new Map<number, tf.Tensor>([[y.id, tf.onesLike(y)]]);
    const held = new Set<tf.Tensor>(acc.values());
    for (let i = filtered.length - 1; i >= 0; i--) {
      const node = filtered[i]!;
      const dys = node.outputs.map((o) => acc.get(o.id) ?? null);
      if (!node.gradient) throw new GradientError(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
      // One tidy per node: what its gradient function computes on the way (customGrad gradients compute eagerly)
      // is freed here, only the input gradients leave.
      const names = Object.keys(node.inputs);
      const dxs = engine.tidy(() => {
        const inputGradients = node.gradient!(dys);
        return names.map((name) => {
          if (!(name in inputGradients)) {
            throw new GradientError(`Cannot backprop through input ${name}. Available gradients found: ${Object.keys(inputGradients)}.`);
          }
          return inputGradients[name]!();
        });
      }) as tf.Tensor[];
      dxs.forEach((dx, j) => {
        if (dxs.indexOf(dx) < j) dxs[j] = dx.clone(); // one tensor returned for two inputs
      });
      for (const [j, name] of names.entries()) {
        let dx = dxs[j]!;
        const x = node.inputs[name]!;
        if (dx.dtype !== 'float32') {
          throw new GradientError(`Error in gradient for op ${node.kernelName}. The gradient of input ${name} must have 'float32' dtype, but has '${dx.dtype}'`);
        }
        if (!tf.util.arraysEqual(dx.shape, x.shape)) {
          throw new GradientError(`Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has shape '${dx.shape}', which does not match the shape of the input '${x.shape}'`);
        }
        // A gradient function may hand back a dy itself (freed below): own a reference.
        if (held.has(dx)) dx = dx.clone();
        const cur = acc.get(x.id);
        if (cur === undefined) {
          acc.set(x.id, dx);
          held.add(dx);
        } else {
          const sum = tf.add(cur, dx);
          acc.set(x.id, sum);
          held.delete(cur);
          held.add(sum);
          cur.dispose();
          dx.dispose();
        }
      }
      disposeSaved(node);
      for (const o of node.outputs) {
        const g = acc.get(o.id);
        if (g === undefined || xIds.has(o.id)) continue;
        held.delete(g);
        g.dispose();
        acc.delete(o.id);
      }
      options.afterNode?.(i);
    }
    return xs.map((x) => acc.get(x.id)) as tf.Tensor[];
  });
  for (const node of tape) disposeSaved(node);
  engine.state.activeTape = null;
  return { value: y, grads: grads as (tf.Tensor | undefined)[] };
}

/**
 * Kernels whose gradient reads only the *shapes* of the tensors it saved (checked against tfjs-core 4.22's
 * gradients/*_grad.js): Reshape and ExpandDims (reshape dy back), Add and Sub (reduce dy over broadcast axes),
 * Sum and Mean (broadcast dy back), Slice and PadV2 (pad / slice dy), Concat (split dy). tfjs saves their inputs
 * whole, which keeps every reshaped or bias-added activation alive until backward: ~40% of a Q-Former step's
 * saved memory. `installShapeOnlySaves` makes the tape keep a shape record instead and frees the data.
 */
const SHAPE_ONLY_GRADIENTS = new Set(['Reshape', 'ExpandDims', 'Add', 'Sub', 'Sum', 'Mean', 'Slice', 'PadV2', 'Concat']);

/** What such a gradient function may read of a saved tensor. */
class ShapeRecord {
  readonly shape: number[];
  readonly dtype: tf.DataType;
  readonly rank: number;
  readonly size: number;
  constructor(t: tf.Tensor) {
    this.shape = [...t.shape];
    this.dtype = t.dtype;
    this.rank = t.rank;
    this.size = t.size;
  }
  dispose(): void {}
}

let shapeOnlyInstalled = false;

export function installShapeOnlySaves(): void {
  if (shapeOnlyInstalled) return;
  const engine = tf.engine() as unknown as { addTapeNode: (...args: unknown[]) => void };
  const addTapeNode = engine.addTapeNode.bind(engine);
  engine.addTapeNode = (kernelName: unknown, inputs: unknown, outputs: unknown, gradientsFunc: unknown, saved: unknown, attrs: unknown) => {
    if (Array.isArray(saved) && SHAPE_ONLY_GRADIENTS.has(kernelName as string) && gradientsFunc == null) {
      for (let i = 0; i < saved.length; i++) {
        const t = saved[i] as tf.Tensor;
        if (!(t instanceof tf.Tensor)) continue;
        saved[i] = new ShapeRecord(t);
        t.dispose();
      }
    }
    addTapeNode(kernelName, inputs, outputs, gradientsFunc, saved, attrs);
  };
  shapeOnlyInstalled = true;
}
