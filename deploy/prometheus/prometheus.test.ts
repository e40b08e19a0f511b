// The Prometheus files of deploy/prometheus/ through promtool: `check config`, `check rules` and the rules' unit
// tests (`test rules alerts.test.yml`). Skipped, saying why, only where promtool is not installed (CI installs it).
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { parse, stringify } from 'yaml';

const here = import.meta.dirname;
const hasPromtool = spawnSync('promtool', ['--version']).status === 0;
if (!hasPromtool) process.stderr.write('deploy/prometheus: promtool not found (Debian package `prometheus`): skipping its checks\n');

const promtool = (args: string[], cwd = here) => {
  const r = spawnSync('promtool', args, { cwd, encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
};

describe.skipIf(!hasPromtool)('deploy/prometheus with promtool', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'blip2-prom-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test('check config: the scrape configuration and the rule file it names', () => {
    let r = promtool(['check', 'config', 'prometheus.yml']);
    if (r.code !== 0 && /field kubernetes_sd_configs not found/.test(r.out)) {
      // Debian's promtool is built without Kubernetes discovery: check everything else (relabelling, rules, the
      // static job) with the discovery block replaced by an empty static target list.
      const config = parse(readFileSync(join(here, 'prometheus.yml'), 'utf8')) as { scrape_configs: Record<string, unknown>[] };
      const k8s = config.scrape_configs.find((s) => s.kubernetes_sd_configs)!;
      expect(k8s.kubernetes_sd_configs).toEqual([{ role: 'pod' }]);
      delete k8s.kubernetes_sd_configs;
      k8s.static_configs = [{ targets: [] }];
      writeFileSync(join(tmp, 'prometheus.yml'), stringify(config));
      copyFileSync(join(here, 'alerts.yml'), join(tmp, 'alerts.yml'));
      r = promtool(['check', 'config', 'prometheus.yml'], tmp);
    }
    expect(r.out).toMatch(/SUCCESS: 1 rule files found/);
    expect(r.code, r.out).toBe(0);
  });

  test('check rules: every alert the issue asks for is there and valid', () => {
    const r = promtool(['check', 'rules', 'alerts.yml']);
    expect(r.code, r.out).toBe(0);
    const names = execFileSync('grep', ['-o', 'alert: [A-Za-z0-9]*', 'alerts.yml'], { cwd: here, encoding: 'utf8' }).trim().split('\n');
    expect(names.map((n) => n.slice(7))).toEqual([
      'Blip2TrainerDown', 'Blip2CoordinatorDown', 'Blip2NoStep', 'Blip2LossNaN', 'Blip2LossExploding', 'Blip2ShardQueueNotDraining',
      'Blip2FrequentGenerationChanges', 'Blip2WorldBelowMin',
    ]);
  });

  test('test rules: each alert fires on its case and stays quiet on the healthy one beside it', () => {
    const r = promtool(['test', 'rules', 'alerts.test.yml']);
    expect(r.out, r.out).toMatch(/SUCCESS/);
    expect(r.code, r.out).toBe(0);
  });

  test('a broken rule is caught (the check can fail)', () => {
    writeFileSync(join(tmp, 'bad.yml'), 'groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: rate(blip2_trainer_steps_total[5m]\n');
    expect(promtool(['check', 'rules', 'bad.yml'], tmp).code).not.toBe(0);
  });
});
