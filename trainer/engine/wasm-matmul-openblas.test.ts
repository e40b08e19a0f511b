// The MatMul checks (matmul-suite.ts) on the OpenBLAS addon.
import { matMulSuite } from './matmul-suite';

matMulSuite('openblas');
