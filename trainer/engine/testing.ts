/**
 * Hooks for tests and benchmarks only (production code never calls them): compare the fused kernels with the
 * composed tfjs ops they replace. The benchmark-only start option is `EngineOptions.stockWasm`.
 */
import { fusedOps, withoutFusedOps } from './wasm-fused';

export const engineTesting = {
  /** Runs `f` with the model-facing ops composed of tfjs ops, as on a backend without the fused kernels. */
  withoutFusedOps,
  /** Whether the model-facing ops run on the fused kernels now (wasm with the native addon). */
  fusedOpsActive: (): boolean => fusedOps() !== undefined,
};
