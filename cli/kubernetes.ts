// `blip2 launch --target kubernetes`: resolves the job config and writes its Kubernetes manifests (rendered by
// deploy/) into a folder, for `kubectl apply -f`: `<job>-secret.yaml` (the Secret, mode 0600) and `<job>.yaml`
// (everything else). The job token is kept across renders of the same job (a re-render must not swap the Secret
// under a running job). Launching into a cluster directly is not done.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { loadJobConfig, UsageError } from '../common';
import { renderKubernetes, toYaml, type RenderOptions } from '../deploy';

export interface KubernetesTargetOptions extends Omit<RenderOptions, 'image' | 'namespace'> {
  /** Job config file (none: defaults, env and flags only). */
  configFile?: string;
  /** Config flags (`--world.trainers 4`). */
  configArgs: string[];
  /** Folder to write the manifests into (created). Required: rendering is all this target does. */
  renderDir?: string;
  image: string;
  namespace: string;
  /** Environment the config reads. Default: process.env. */
  env?: NodeJS.ProcessEnv;
}

export interface RenderedFiles {
  /** `<renderDir>/<job>.yaml`: every object but the Secret. */
  manifests: string;
  /** `<renderDir>/<job>-secret.yaml`: the Secret, mode 0600. */
  secret: string;
  /** Whether the job token came from an earlier render of this job. */
  tokenKept: boolean;
}

/** The job token of an earlier render's Secret file, if there is one. */
function previousToken(file: string): string | undefined {
  if (!existsSync(file)) return undefined;
  try {
    for (const doc of parseAllDocuments(readFileSync(file, 'utf8'))) {
      const obj = doc.toJS() as { kind?: string; stringData?: Record<string, string> } | null;
      if (obj?.kind === 'Secret' && obj.stringData?.BLIP2_JOB_TOKEN) return obj.stringData.BLIP2_JOB_TOKEN;
    }
  } catch (e) {
    throw new UsageError(`${file}: not the Secret file of an earlier render (${(e as Error).message}); remove it to generate a new token`);
  }
  throw new UsageError(`${file}: holds no BLIP2_JOB_TOKEN; remove it to generate a new token`);
}

/**
 * Writes the job's manifests into renderDir. The token: job.token when the config sets it, else the one of an
 * earlier render into the same folder, else a new one.
 */
export function renderKubernetesTarget(o: KubernetesTargetOptions): RenderedFiles {
  if (!o.renderDir) {
    throw new UsageError('--target kubernetes only renders manifests: add --render-dir DIR, then `kubectl apply -f DIR`');
  }
  const { config } = loadJobConfig({ file: o.configFile, env: o.env, argv: o.configArgs });
  const secret = join(o.renderDir, `${config.job.id}-secret.yaml`);
  const manifests = join(o.renderDir, `${config.job.id}.yaml`);
  let tokenKept = false;
  if (!config.job.token) {
    const kept = previousToken(secret);
    tokenKept = kept !== undefined;
    config.job.token = kept ?? randomBytes(16).toString('hex');
  }
  const objects = renderKubernetes(config, o); // refuses a job id Kubernetes cannot use, before anything is written
  mkdirSync(o.renderDir, { recursive: true });
  writeFileSync(secret, toYaml(objects.filter((x) => x.kind === 'Secret')), { mode: 0o600 });
  chmodSync(secret, 0o600); // also when an earlier file had wider permissions
  writeFileSync(manifests, toYaml(objects.filter((x) => x.kind !== 'Secret')));
  return { manifests, secret, tokenKept };
}
