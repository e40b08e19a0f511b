/**
 * Kubernetes manifests for a job (`blip2 launch --target kubernetes --render-dir DIR`), rendered from the same
 * resolved job config the local launcher uses. Applying them is left to `kubectl apply -f DIR`; nothing here talks
 * to a cluster.
 *
 *   Secret      <job>-secrets      job token (and NATS secrets), as BLIP2_* environment variables
 *   ConfigMap   <job>-config       job.json: the resolved config without secrets, paths under /data
 *   StatefulSet <job>-nats         nats-server with JetStream on a volume (only when nats.url is empty)
 *   Service     <job>-nats
 *   Deployment  <job>-coordinator  coordinator/main.ts, /metrics on 9400
 *   StatefulSet <job>-trainer      world.trainers trainers, node id = pod name, gRPC on 50051, /metrics on 9401
 *   Service     <job>-trainer      headless (stable DNS for the StatefulSet)
 *
 * Data, checkpoints and metrics JSONL live on one ReadWriteMany volume claim, `<job>-data`, mounted at /data
 * (data.root defaults to /data/dataset, job.runDir to /data/runs/<job>): it must exist (or be created by the
 * PersistentVolumeClaim rendered here, if the cluster has a RWX storage class).
 */
import { stringify } from 'yaml';
import type { JobConfig } from '../../common';

export interface RenderOptions {
  /** Container image holding this repository with its node_modules. Default: blip2-dist:latest. */
  image?: string;
  /** Namespace of every object. Default: default. */
  namespace?: string;
  /** Size of the data volume claim. Default: 20Gi. */
  dataVolumeSize?: string;
  /** Storage class of the data volume claim (must offer ReadWriteMany). Default: the cluster's default. */
  storageClass?: string;
}

export const COORDINATOR_METRICS_PORT = 9400;
export const TRAINER_METRICS_PORT = 9401;
export const TRAINER_GRPC_PORT = 50051;

type Obj = Record<string, unknown>;

/** The rendered objects, in apply order. */
export function renderKubernetes(config: JobConfig, o: RenderOptions = {}): Obj[] {
  const image = o.image ?? 'blip2-dist:latest';
  const namespace = o.namespace ?? 'default';
  const name = config.job.id.toLowerCase().replace(/_/g, '-');
  const labels = (component: string) => ({ 'app.kubernetes.io/name': 'blip2-dist', 'app.kubernetes.io/instance': name, 'app.kubernetes.io/component': component });
  const meta = (n: string, component: string) => ({ name: n, namespace, labels: labels(component) });
  const natsUrl = config.nats.url || `nats://${name}-nats.${namespace}.svc:4222`;

  // The config the pods read: secrets out, paths on the data volume.
  const c = JSON.parse(JSON.stringify(config)) as JobConfig;
  c.job.token = '';
  c.nats = { ...c.nats, url: natsUrl, password: '', token: '' };
  c.job.runDir = `/data/runs/${config.job.id}`;
  c.checkpoint.dir = `${c.job.runDir}/checkpoints`;
  c.data.root = '/data/dataset';
  c.data.tokenizer = '/data/dataset/tokenizer.json';
  c.node.id = '';
  c.grpc = { ...c.grpc, host: '0.0.0.0', advertiseHost: '', port: TRAINER_GRPC_PORT };
  c.metrics = { ...c.metrics, host: '0.0.0.0', port: 0 };

  const secretEnv = { BLIP2_JOB_TOKEN: config.job.token, ...(config.nats.password ? { BLIP2_NATS_PASSWORD: config.nats.password } : {}), ...(config.nats.token ? { BLIP2_NATS_TOKEN: config.nats.token } : {}) };
  const dataVolume = { name: 'data', persistentVolumeClaim: { claimName: `${name}-data` } };
  const configVolume = { name: 'config', configMap: { name: `${name}-config` } };
  const mounts = [{ name: 'data', mountPath: '/data' }, { name: 'config', mountPath: '/etc/blip2', readOnly: true }];
  const container = (component: string, entry: string, env: Obj[], ports: Obj[]) => ({
    name: component,
    image,
    workingDir: '/app',
    command: ['node', '--import', 'tsx', entry, '--config', '/etc/blip2/job.json'],
    env: [{ name: 'BLIP2_LOG_FORMAT', value: 'json' }, ...env],
    envFrom: [{ secretRef: { name: `${name}-secrets` } }],
    ports,
    volumeMounts: mounts,
  });
  const scrape = (port: number) => ({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(port), 'prometheus.io/path': '/metrics' });

  const objects: Obj[] = [
    { apiVersion: 'v1', kind: 'Secret', metadata: meta(`${name}-secrets`, 'secrets'), type: 'Opaque', stringData: secretEnv },
    { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(`${name}-config`, 'config'), data: { 'job.json': JSON.stringify(c, null, 2) + '\n' } },
    {
      apiVersion: 'v1', kind: 'PersistentVolumeClaim', metadata: meta(`${name}-data`, 'data'),
      spec: {
        accessModes: ['ReadWriteMany'], resources: { requests: { storage: o.dataVolumeSize ?? '20Gi' } },
        ...(o.storageClass ? { storageClassName: o.storageClass } : {}),
      },
    },
  ];
  if (!config.nats.url) {
    objects.push(
      {
        apiVersion: 'apps/v1', kind: 'StatefulSet', metadata: meta(`${name}-nats`, 'nats'),
        spec: {
          serviceName: `${name}-nats`, replicas: 1, selector: { matchLabels: labels('nats') },
          template: {
            metadata: { labels: labels('nats') },
            spec: {
              containers: [{
                name: 'nats', image: 'nats:2.10-alpine', args: ['-js', '-sd', '/store', '-p', '4222', '-m', '8222'],
                ports: [{ name: 'client', containerPort: 4222 }, { name: 'monitor', containerPort: 8222 }],
                volumeMounts: [{ name: 'store', mountPath: '/store' }],
              }],
            },
          },
          volumeClaimTemplates: [{ metadata: { name: 'store' }, spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '2Gi' } } } }],
        },
      },
      {
        apiVersion: 'v1', kind: 'Service', metadata: meta(`${name}-nats`, 'nats'),
        spec: { selector: labels('nats'), ports: [{ name: 'client', port: 4222, targetPort: 4222 }] },
      },
    );
  }
  objects.push(
    {
      apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta(`${name}-coordinator`, 'coordinator'),
      spec: {
        replicas: 1, strategy: { type: 'Recreate' }, selector: { matchLabels: labels('coordinator') },
        template: {
          metadata: { labels: labels('coordinator'), annotations: scrape(COORDINATOR_METRICS_PORT) },
          spec: {
            containers: [container('coordinator', 'coordinator/main.ts',
              [{ name: 'BLIP2_NODE_ID', value: 'coordinator' }, { name: 'BLIP2_METRICS_PORT', value: String(COORDINATOR_METRICS_PORT) }],
              [{ name: 'metrics', containerPort: COORDINATOR_METRICS_PORT }])],
            volumes: [dataVolume, configVolume],
          },
        },
      },
    },
    {
      apiVersion: 'v1', kind: 'Service', metadata: meta(`${name}-trainer`, 'trainer'),
      spec: { clusterIP: 'None', selector: labels('trainer'), ports: [{ name: 'grpc', port: TRAINER_GRPC_PORT }] },
    },
    {
      apiVersion: 'apps/v1', kind: 'StatefulSet', metadata: meta(`${name}-trainer`, 'trainer'),
      spec: {
        serviceName: `${name}-trainer`, replicas: config.world.trainers, podManagementPolicy: 'Parallel',
        selector: { matchLabels: labels('trainer') },
        template: {
          metadata: { labels: labels('trainer'), annotations: scrape(TRAINER_METRICS_PORT) },
          spec: {
            containers: [container('trainer', 'trainer/main.ts', [
              { name: 'BLIP2_NODE_ID', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
              { name: 'BLIP2_GRPC_ADVERTISE_HOST', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
              { name: 'BLIP2_METRICS_PORT', value: String(TRAINER_METRICS_PORT) },
            ], [{ name: 'grpc', containerPort: TRAINER_GRPC_PORT }, { name: 'metrics', containerPort: TRAINER_METRICS_PORT }])],
            volumes: [dataVolume, configVolume],
          },
        },
      },
    },
  );
  return objects;
}

/** One YAML stream (documents separated by `---`). */
export function renderKubernetesYaml(config: JobConfig, o: RenderOptions = {}): string {
  return renderKubernetes(config, o).map((obj) => stringify(obj)).join('---\n');
}
