// The Kubernetes manifests of a job: the objects rendered, secrets only in the Secret, NATS only when needed.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { expect, test } from 'vitest';
import { loadJobConfig } from '../../common';
import { renderKubernetes, renderKubernetesYaml } from './manifests';

test('renders the job as Kubernetes objects, secrets only in the Secret', () => {
  const { config } = loadJobConfig({ env: {}, argv: ['--job.id', 'coco_s1', '--job.token', 's3cret-token', '--world.trainers', '4', '--train.epochs', '3'] });
  const docs = parseAllDocuments(renderKubernetesYaml(config, { image: 'reg/blip2:1', namespace: 'ml' })).map((d) => d.toJS() as Record<string, any>);
  expect(docs.map((d) => `${d.kind}/${d.metadata.name}`)).toEqual([
    'Secret/coco-s1-secrets', 'ConfigMap/coco-s1-config', 'PersistentVolumeClaim/coco-s1-data',
    'StatefulSet/coco-s1-nats', 'Service/coco-s1-nats', 'Deployment/coco-s1-coordinator', 'Service/coco-s1-trainer', 'StatefulSet/coco-s1-trainer',
  ]);
  for (const d of docs) expect(d.metadata.namespace).toBe('ml');
  const secret = docs[0]!;
  expect(secret.stringData).toEqual({ BLIP2_JOB_TOKEN: 's3cret-token' });
  const text = JSON.stringify(docs.slice(1));
  expect(text).not.toContain('s3cret-token');
  // The pods' config: a valid job config (the loader accepts it), pointing at the rendered NATS service.
  const jobJson = JSON.parse(docs[1]!.data['job.json']);
  expect(jobJson.nats.url).toBe('nats://coco-s1-nats.ml.svc:4222');
  expect(jobJson.train.epochs).toBe(3);
  const file = join(mkdtempSync(join(tmpdir(), 'blip2-k8s-')), 'job.json');
  writeFileSync(file, docs[1]!.data['job.json']);
  expect(loadJobConfig({ file, env: { BLIP2_NODE_ID: 'coco-s1-trainer-0' } }).config).toMatchObject({ job: { id: 'coco_s1', runDir: '/data/runs/coco_s1' }, grpc: { port: 50051 } });
  const trainers = docs.at(-1)!;
  expect(trainers.spec.replicas).toBe(4);
  const c = trainers.spec.template.spec.containers[0];
  expect(c.image).toBe('reg/blip2:1');
  expect(c.command).toEqual(['node', '--import', 'tsx', 'trainer/main.ts', '--config', '/etc/blip2/job.json']);
  expect(c.env).toContainEqual({ name: 'BLIP2_NODE_ID', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } });
  expect(c.envFrom).toEqual([{ secretRef: { name: 'coco-s1-secrets' } }]);
  expect(trainers.spec.template.metadata.annotations['prometheus.io/port']).toBe('9401');
});

test('with nats.url set, no NATS server is rendered', () => {
  const { config } = loadJobConfig({ env: {}, argv: ['--nats.url', 'nats://nats.infra:4222'] });
  const kinds = renderKubernetes(config).map((d) => `${d.kind}/${(d.metadata as { name: string }).name}`);
  expect(kinds.some((k) => k.includes('-nats'))).toBe(false);
});
