/**
 * Writes the training dashboard's JSON (deploy/grafana/dashboard.ts): `npm run grafana:dashboard -- [--out FILE]`.
 * Default FILE: deploy/grafana/out/blip2-training.json, the folder deploy/grafana/provisioning/dashboards.yaml
 * has Grafana load dashboards from when it is mounted at /var/lib/grafana/dashboards/blip2.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { buildDashboard } from './dashboard';

const USAGE = 'Usage: npm run grafana:dashboard -- [--out FILE]   (default deploy/grafana/out/blip2-training.json)\n';
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const usageError = (why: string): never => {
  process.stderr.write(`grafana:dashboard: ${why}\n${USAGE}`);
  process.exit(2);
};
let out = resolve(import.meta.dirname, 'out/blip2-training.json');
for (let i = 0; i < args.length; i++) {
  if (args[i] !== '--out') usageError(`unknown argument ${JSON.stringify(args[i])}`);
  const file = args[++i];
  if (!file || file.startsWith('-')) usageError('--out needs a file name');
  out = resolve(file!);
}
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(buildDashboard(), null, 2) + '\n');
process.stdout.write(`dashboard written to ${out}\n`);
