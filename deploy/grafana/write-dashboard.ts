/**
 * Writes the training dashboard's JSON (deploy/grafana/dashboard.ts): `npm run grafana:dashboard -- [--out FILE]`.
 * Default FILE: deploy/grafana/out/blip2-training.json, the folder deploy/grafana/provisioning/dashboards.yaml
 * has Grafana load dashboards from when it is mounted at /var/lib/grafana/dashboards/blip2.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { buildDashboard } from './dashboard';

const args = process.argv.slice(2);
const at = args.indexOf('--out');
if (args.includes('--help') || args.includes('-h') || (at >= 0 && !args[at + 1]) || args.some((a, i) => a.startsWith('-') && a !== '--out' && i !== at + 1)) {
  process.stderr.write('Usage: npm run grafana:dashboard -- [--out FILE]   (default deploy/grafana/out/blip2-training.json)\n');
  process.exit(args.includes('--help') || args.includes('-h') ? 0 : 2);
}
const out = resolve(at >= 0 ? args[at + 1]! : resolve(import.meta.dirname, 'out/blip2-training.json'));
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(buildDashboard(), null, 2) + '\n');
process.stdout.write(`dashboard written to ${out}\n`);
