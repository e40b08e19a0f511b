/**
 * An in-process collective group: `worldSize` members that live in one process (one per rank) and exchange
 * arrays through memory. A one-member group is what a single-trainer job uses; larger groups let the step's
 * algorithm be tested without a network (the gRPC collectives are tested across processes elsewhere).
 * Operations must be called in the same order on every member, as with any collective.
 */
import type { LoopCollective } from './loop';

interface Pending {
  blocks: (Float32Array | undefined)[];
  arrived: number;
  resolve: (() => void)[];
}

export function createLocalGroup(worldSize: number): LoopCollective[] {
  if (!Number.isInteger(worldSize) || worldSize < 1) throw new RangeError(`worldSize ${worldSize} must be an integer ≥ 1`);
  const ops = new Map<number, Pending>();
  const exchange = async (rank: number, op: number, block: Float32Array): Promise<Float32Array[]> => {
    let p = ops.get(op);
    if (!p) ops.set(op, (p = { blocks: new Array(worldSize), arrived: 0, resolve: [] }));
    p.blocks[rank] = block.slice();
    p.arrived++;
    if (p.arrived < worldSize) await new Promise<void>((r) => p!.resolve.push(r));
    else {
      ops.delete(op);
      for (const r of p.resolve) r();
    }
    return p.blocks as Float32Array[];
  };
  return Array.from({ length: worldSize }, (_, rank) => {
    let op = 0;
    return {
      rank,
      worldSize,
      allGather: (block: Float32Array) => exchange(rank, op++, block),
      async allReduce(data: Float32Array) {
        const blocks = await exchange(rank, op++, data);
        const out = data;
        out.fill(0);
        // Sum in rank order on every member, so that all members get bit-identical results.
        for (const b of blocks) for (let i = 0; i < out.length; i++) out[i]! += b[i]!;
        return out;
      },
      async broadcast(data: Float32Array, root: number) {
        const blocks = await exchange(rank, op++, data);
        data.set(blocks[root]!);
      },
    };
  });
}
