// `blip2 launch --target kubernetes`: resolves the job config and writes its Kubernetes manifests (rendered by
// deploy/) into a folder, for `kubectl apply -f`. Launching into a cluster directly is not done yet.
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadJobConfig, UsageError } from '../common';
import { renderKubernetesYaml } from '../deploy';

export interface KubernetesTargetOptions {
  /** Job config file (none: defaults, env and flags only). */
  configFile?: string;
  /** Config flags (`--world.trainers 4`). */
  configArgs: string[];
  /** Folder to write `<job>.yaml` into (created). Required: rendering is all this target does so far. */
  renderDir?: string;
  image: string;
  namespace: string;
}

/** Writes `<renderDir>/<job.id>.yaml` (a generated job token when the config has none) and returns its path. */
export function renderKubernetesTarget(o: KubernetesTargetOptions): string {
  if (!o.renderDir) {
    throw new UsageError('--target kubernetes only renders manifests so far: add --render-dir DIR, then `kubectl apply -f DIR`');
  }
  const { config } = loadJobConfig({ file: o.configFile, argv: o.configArgs });
  if (!config.job.token) config.job.token = randomBytes(16).toString('hex');
  mkdirSync(o.renderDir, { recursive: true });
  const file = join(o.renderDir, `${config.job.id}.yaml`);
  writeFileSync(file, renderKubernetesYaml(config, { image: o.image, namespace: o.namespace }));
  return file;
}
