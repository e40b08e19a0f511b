// The generated dashboard's shape: the data source and `job` variables, the rows the issue asks for, every panel
// querying the selected job; and what the writer script refuses.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { buildDashboard, dashboardQueries, metricNames } from './dashboard';

test('variables, rows, and every query scoped to the selected job', () => {
  const d = buildDashboard() as unknown as { uid: string; templating: { list: { name: string; type: string; query?: unknown }[] }; panels: { type: string; title: string; targets?: { expr: string }[] }[] };
  expect(d.uid).toBe('blip2-training');
  expect(d.templating.list.map((v) => [v.name, v.type])).toEqual([['datasource', 'datasource'], ['job', 'query']]);
  expect(d.panels.filter((p) => p.type === 'row').map((p) => p.title)).toEqual([
    'Losses', 'Evaluation (held-out split)', 'Throughput and progress', 'Step time', 'Collectives', 'Data pipeline', 'Membership', 'Processes',
  ]);
  const panels = d.panels.filter((p) => p.type !== 'row');
  expect(panels.length).toBe(dashboardQueries().map((q) => q.panel).filter((p, i, a) => a.indexOf(p) === i).length);
  for (const p of panels) {
    expect(p.targets?.length, p.title).toBeGreaterThan(0);
    for (const t of p.targets!) {
      expect(metricNames(t.expr).length, t.expr).toBeGreaterThan(0);
      for (const sel of t.expr.match(/\b(?:blip2|process|nodejs)_[a-z0-9_]+(\{[^}]*\})?/g)!) expect(sel, t.expr).toMatch(/\{job_id="\$job"(,[a-z_]+="[^"$]*")*\}$/); // the job first, then fixed labels
    }
  }
});

test('the writer refuses an unknown argument with exit 2', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'write-dashboard.ts'), '--outt', 'x.json'], { encoding: 'utf8' });
  expect(r.status).toBe(2);
  expect(r.stderr).toMatch(/unknown argument "--outt"/);
});
