import { matMulSuite } from './matmul-suite';

matMulSuite('xnnpack');
