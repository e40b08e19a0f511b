#!/usr/bin/env node
// The `blip2` command. Sources are TypeScript run through tsx's loader, so no build step stands between a
// checkout and a working command.
import { register } from 'tsx/esm/api';

register();
await import('../cli/main.ts');
