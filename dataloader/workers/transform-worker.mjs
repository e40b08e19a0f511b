// Worker-thread entry: loads the TypeScript worker through tsx, as bin/blip2.js does for the CLI.
import { register } from 'tsx/esm/api';

register();
await import('./transform-worker.ts');
