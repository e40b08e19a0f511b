// The MatMul checks (matmul-suite.ts) on wasm XNNPACK.
import { matMulSuite } from './matmul-suite';

matMulSuite('xnnpack');
