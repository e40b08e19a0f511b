// The Kubernetes manifests of a job: every object valid against the Kubernetes schemas, Jobs that end, secrets only
// in the Secret, resources, probes and non-root pods, the dataset put on the volume, and refused job ids.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { describe, expect, test } from 'vitest';
import { loadJobConfig, UsageError } from '../../common';
import { checkKubernetesJobId, cpuCores, renderKubernetes, renderKubernetesYaml } from './manifests';

const config = (...argv: string[]) => loadJobConfig({ env: {}, argv: ['--job.token', 's3cret-token', ...argv] }).config;
type Doc = Record<string, any>;
const docsOf = (yaml: string): Doc[] => parseAllDocuments(yaml).map((d) => d.toJS() as Doc);
const byName = (docs: Doc[], kindName: string) => docs.find((d) => `${d.kind}/${d.metadata.name}` === kindName)!;

test('renders the job as valid Kubernetes objects, secrets only in the Secret', () => {
  const objects = renderKubernetes(config('--job.id', 'coco-s1', '--world.trainers', '4', '--world.min', '2', '--train.epochs', '3'), { image: 'reg/blip2:1', namespace: 'ml' });
  for (const o of objects) expect(() => o.validate()).not.toThrow();
  const docs = docsOf(renderKubernetesYaml(config('--job.id', 'coco-s1', '--world.trainers', '4', '--world.min', '2', '--train.epochs', '3'), { image: 'reg/blip2:1', namespace: 'ml' }));
  expect(docs.map((d) => `${d.kind}/${d.metadata.name}`)).toEqual([
    'Secret/coco-s1-secrets', 'ConfigMap/coco-s1-config', 'PersistentVolumeClaim/coco-s1-data',
    'StatefulSet/coco-s1-nats', 'Service/coco-s1-nats', 'Job/coco-s1-coordinator', 'Service/coco-s1-trainer', 'Job/coco-s1-trainer',
  ]);
  for (const d of docs) expect(d.metadata.namespace).toBe('ml');
  expect(docs[0]!.stringData).toEqual({ BLIP2_JOB_TOKEN: 's3cret-token' });
  expect(JSON.stringify(docs.slice(1))).not.toContain('s3cret-token');
  // The pods' config: a valid job config (the loader accepts it), pointing at the rendered NATS service.
  const jobJson = JSON.parse(docs[1]!.data['job.json']);
  expect(jobJson.nats.url).toBe('nats://coco-s1-nats.ml.svc:4222');
  expect(jobJson.train.epochs).toBe(3);
  const file = join(mkdtempSync(join(tmpdir(), 'blip2-k8s-')), 'job.json');
  writeFileSync(file, docs[1]!.data['job.json']);
  expect(loadJobConfig({ file, env: { BLIP2_NODE_ID: 'coco-s1-trainer-0' } }).config).toMatchObject({ job: { id: 'coco-s1', runDir: '/data/runs/coco-s1' }, grpc: { port: 50051 } });
});

describe('workloads that end', () => {
  const docs = docsOf(renderKubernetesYaml(config('--job.id', 'coco-s1', '--world.trainers', '4', '--world.min', '2'), { image: 'reg/blip2:1', trainerCpu: '6', trainerMemory: '12Gi' }));
  const trainers = byName(docs, 'Job/coco-s1-trainer');
  const coordinator = byName(docs, 'Job/coco-s1-coordinator');

  test('trainers: an Indexed Job with a headless Service, retried per index, done when one trainer has seen the end', () => {
    expect(trainers.spec).toMatchObject({
      completionMode: 'Indexed', completions: 4, parallelism: 4, backoffLimitPerIndex: 4, maxFailedIndexes: 2,
      successPolicy: { rules: [{ succeededCount: 1 }] }, podReplacementPolicy: 'Failed',
    });
    expect(trainers.spec.podFailurePolicy.rules).toEqual([
      { action: 'FailJob', onExitCodes: { containerName: 'trainer', operator: 'In', values: [2] } },
      { action: 'Ignore', onPodConditions: [{ type: 'DisruptionTarget', status: 'True' }] },
    ]);
    const pod = trainers.spec.template.spec;
    expect(pod.restartPolicy).toBe('Never');
    expect(pod.subdomain).toBe('coco-s1-trainer');
    const service = byName(docs, 'Service/coco-s1-trainer');
    expect(service.spec).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: true });
    const c = pod.containers[0];
    expect(c.image).toBe('reg/blip2:1');
    expect(c.command).toEqual(['node', '--import', 'tsx', 'trainer/main.ts', '--config', '/etc/blip2/job.json']);
    // Node id = the pod's stable hostname, from the completion index.
    const env = Object.fromEntries(c.env.map((e: Doc) => [e.name, e.value ?? e.valueFrom]));
    expect(env.JOB_INDEX).toEqual({ fieldRef: { fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']" } });
    expect(env.BLIP2_NODE_ID).toBe('coco-s1-trainer-$(JOB_INDEX)');
    expect(c.env.findIndex((e: Doc) => e.name === 'JOB_INDEX')).toBeLessThan(c.env.findIndex((e: Doc) => e.name === 'BLIP2_NODE_ID'));
    // Threads from the CPU limit, not from the node's cores.
    expect(env.BLIP2_ENGINE_THREADS).toBe('6');
    expect(env.BLIP2_ENGINE_MATMUL_THREADS).toBe('6');
    expect(c.resources).toEqual({ requests: { cpu: '6', memory: '12Gi' }, limits: { cpu: '6', memory: '12Gi' } });
    expect(c.envFrom).toEqual([{ secretRef: { name: 'coco-s1-secrets' } }]);
    expect(trainers.spec.template.metadata.annotations['prometheus.io/port']).toBe('9401');
    expect(pod.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm.topologyKey).toBe('kubernetes.io/hostname');
    // The trainers wait for the dataset (their tokenizer is read at start).
    expect(pod.initContainers.map((i: Doc) => i.name)).toEqual(['wait-for-data']);
  });

  test('coordinator: a Job of one pod, retried, failed at once on bad input; its init container puts the synthetic dataset on the volume', () => {
    expect(coordinator.spec).toMatchObject({ completions: 1, parallelism: 1, backoffLimit: 4, podReplacementPolicy: 'Failed' });
    expect(coordinator.spec.podFailurePolicy.rules[0]).toEqual({ action: 'FailJob', onExitCodes: { containerName: 'coordinator', operator: 'In', values: [2] } });
    const pod = coordinator.spec.template.spec;
    expect(pod.restartPolicy).toBe('Never');
    const init = pod.initContainers[0];
    expect(init.name).toBe('data');
    expect(init.command.join(' ')).toMatch(/\[ -f \/data\/dataset\/index\.json \] \|\| exec node bin\/blip2\.js data synth --out \/data\/dataset --samples 128/);
  });

  test('every container: non-root, no privilege escalation, read-only root, probes on /readyz and /healthz', () => {
    for (const d of docs.filter((x) => x.kind === 'Job' || x.kind === 'StatefulSet')) {
      const pod = d.spec.template.spec;
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000 });
      for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
        expect(c.securityContext, `${d.metadata.name}/${c.name}`).toMatchObject({ runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
        expect(c.resources.limits.memory, `${d.metadata.name}/${c.name}`).toBeDefined();
      }
    }
    for (const j of [trainers, coordinator]) {
      const c = j.spec.template.spec.containers[0];
      expect(c.readinessProbe.httpGet.path).toBe('/readyz');
      expect(c.livenessProbe.httpGet.path).toBe('/healthz');
      expect(c.livenessProbe.httpGet.port).toBe(Number(j.spec.template.metadata.annotations['prometheus.io/port']));
    }
  });
});

test('a dataset of your own is awaited on the volume, GPUs are requested, explicit engine threads win', () => {
  const docs = docsOf(renderKubernetesYaml(config('--job.id', 'own', '--data.root', '/srv/coco', '--engine.threads', '3'), { trainerGpus: 1 }));
  const init = byName(docs, 'Job/own-coordinator').spec.template.spec.initContainers[0];
  expect(init.command.join(' ')).toContain('until [ -f /data/dataset/index.json ]');
  expect(init.command.join(' ')).toContain('kubectl cp');
  const c = byName(docs, 'Job/own-trainer').spec.template.spec.containers[0];
  expect(c.resources.limits['nvidia.com/gpu']).toBe('1');
  const names = c.env.map((e: Doc) => e.name);
  expect(names).not.toContain('BLIP2_ENGINE_THREADS'); // engine.threads 3 comes from the ConfigMap
  expect(names).toContain('BLIP2_ENGINE_MATMUL_THREADS');
});

test('with nats.url set, no NATS server is rendered', () => {
  const kinds = renderKubernetes(config('--nats.url', 'nats://nats.infra:4222')).map((d) => `${d.kind}/${d.metadata!.name}`);
  expect(kinds.some((k) => k.includes('-nats'))).toBe(false);
});

test('job ids that cannot name Kubernetes objects are refused with the rule and a suggestion', () => {
  expect(() => checkKubernetesJobId('coco_s1')).toThrow(/job.id "coco_s1" cannot name Kubernetes objects.*only lower-case letters, digits and "-".*e\.g\. "coco-s1"/);
  expect(() => checkKubernetesJobId('1job')).toThrow(/must start with a lower-case letter/);
  expect(() => checkKubernetesJobId('Job')).toThrow(UsageError);
  expect(() => checkKubernetesJobId('job-')).toThrow(/must end with a letter or digit/);
  expect(() => checkKubernetesJobId('a'.repeat(52))).toThrow(/52 characters, at most 51/);
  expect(() => checkKubernetesJobId('a'.repeat(51))).not.toThrow();
  expect(() => renderKubernetes(config('--job.id', 'coco_s1'))).toThrow(UsageError);
});

test('bad resource quantities are refused, naming the object', () => {
  expect(cpuCores('3500m')).toBe(3.5);
  expect(() => cpuCores('four')).toThrow(/not a CPU quantity/);
  expect(() => renderKubernetes(config(), { trainerMemory: '8 GB' })).toThrow(/rendered Job blip2-demo-trainer is not valid Kubernetes: .*memory/);
});
