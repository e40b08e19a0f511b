import { matMulSuite } from './matmul-suite';

matMulSuite('openblas');
