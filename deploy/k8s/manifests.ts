/**
 * Kubernetes manifests for a job (`blip2 launch --target kubernetes --render-dir DIR`), rendered as typed objects
 * (kubernetes-models, each one checked against the Kubernetes schemas by its validate()) from the same resolved job
 * config the local launcher uses. Applying them is left to `kubectl apply -f DIR`; nothing here talks to a cluster.
 *
 *   Secret                <job>-secrets      job token (and NATS secrets), as BLIP2_* environment variables
 *   ConfigMap             <job>-config       job.json: the resolved config without secrets, paths under /data
 *   PersistentVolumeClaim <job>-data         ReadWriteMany: dataset, checkpoints, logs and metrics JSONL
 *   StatefulSet, Service  <job>-nats         nats-server with JetStream on its own volume (only when nats.url is empty)
 *   Job                   <job>-coordinator  coordinator/main.ts; its `data` init container puts the dataset on the volume
 *   Service               <job>-trainer      headless: trainer pods get stable names <job>-trainer-<i>.<job>-trainer
 *   Job (Indexed)         <job>-trainer      world.trainers trainers, node id <job>-trainer-<completion index>
 *
 * Why batch/v1 Jobs: the job ends. A trainer and the coordinator exit 0 only when the job has ended (finished, or
 * stopped by `blip2 stop`), 2 for bad input, and 143 when a signal stopped them first, so:
 *  - the coordinator Job (restartPolicy Never) replaces a failed or evicted coordinator (the job state is in NATS KV,
 *    so the new one continues it) up to backoffLimit times; exit 0 completes it, and a coordinator started again
 *    on a finished job exits 0 at once, so it cannot crash-loop;
 *  - the trainer Job is Indexed: a failed trainer's pod is replaced with the same index, hence the same node id (a
 *    new incarnation that takes the old one's place), up to backoffLimitPerIndex times; with world.min below
 *    world.trainers, up to world.trainers - world.min indexes may fail for good and the job still trains
 *    (maxFailedIndexes), as the elastic design allows; the successPolicy declares the Job done as soon as one trainer
 *    has exited 0, because one does so only once the job has ended (a spare or a lost index need not);
 *  - exit 2 (bad config, refused token, corrupted checkpoint) fails the Job at once instead of retrying, and a pod
 *    lost to a disruption (eviction, preemption, node drain) does not count against the retries (podFailurePolicy).
 */
import { stringify } from 'yaml';
import { Job } from 'kubernetes-models/batch/v1';
import { StatefulSet } from 'kubernetes-models/apps/v1';
import { ConfigMap, PersistentVolumeClaim, Secret, Service } from 'kubernetes-models/v1';
import type { IContainer, IEnvVar, IPodSpec, IProbe, IResourceRequirements } from 'kubernetes-models/v1';
import type { IPodFailurePolicy } from 'kubernetes-models/batch/v1';
import { UsageError, type JobConfig } from '../../common';

export interface RenderOptions {
  /** Container image holding this repository with its node_modules (deploy/Dockerfile). Default: blip2-dist:latest. */
  image?: string;
  /** Namespace of every object. Default: default. */
  namespace?: string;
  /** Size of the data volume claim. Default: 20Gi. */
  dataVolumeSize?: string;
  /** Storage class of the data volume claim (must offer ReadWriteMany). Default: the cluster's default. */
  storageClass?: string;
  /** CPU request and limit of each trainer (a Kubernetes quantity); the engine's threads follow it. Default: 4. */
  trainerCpu?: string;
  /** Memory request and limit of each trainer. Default: 8Gi. */
  trainerMemory?: string;
  /** nvidia.com/gpu per trainer, for the GPU image (0: none). Default: 0. */
  trainerGpus?: number;
  /** Times a trainer index (and the coordinator) is retried after a failure. Default: 4. */
  retries?: number;
}

export const COORDINATOR_METRICS_PORT = 9400;
export const TRAINER_METRICS_PORT = 9401;
export const TRAINER_GRPC_PORT = 50051;
export const NATS_CLIENT_PORT = 4222;
/** Where the data volume is mounted in every pod. */
export const DATA_MOUNT = '/data';
/** Where the ConfigMap's job.json is mounted. */
export const CONFIG_MOUNT = '/etc/blip2';
/** User and group the containers run as (the node image's `node` user). */
export const RUN_AS_USER = 1000;

/** The longest suffix the renderer adds to the job id (`-coordinator`), so the id leaves room for it in 63. */
const LONGEST_SUFFIX = '-coordinator'.length;
/** Most characters of a job id that names Kubernetes objects (a trainer's hostname adds `-trainer-<index>`). */
export const MAX_KUBERNETES_JOB_ID = 63 - LONGEST_SUFFIX;

/**
 * A job id names Services, Jobs and pod hostnames, so it must be a DNS-1035 label short enough for the suffixes
 * (`-coordinator`, `-trainer-<index>`). Refused rather than mapped: the id also names the job's NATS subjects and KV
 * bucket, and one name in both places is easier to follow.
 */
export function checkKubernetesJobId(id: string): void {
  const problems: string[] = [];
  if (!/^[a-z]/.test(id)) problems.push('it must start with a lower-case letter');
  if (/[^a-z0-9-]/.test(id)) problems.push('only lower-case letters, digits and "-" are allowed');
  if (/-$/.test(id)) problems.push('it must end with a letter or digit');
  if (id.length > MAX_KUBERNETES_JOB_ID) problems.push(`it has ${id.length} characters, at most ${MAX_KUBERNETES_JOB_ID} leave room for "-coordinator"`);
  if (problems.length) {
    const suggestion = id.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^[^a-z]+/, '').slice(0, MAX_KUBERNETES_JOB_ID).replace(/-+$/, '');
    throw new UsageError(
      `job.id ${JSON.stringify(id)} cannot name Kubernetes objects (a DNS-1035 label): ${problems.join('; ')}` +
        (suggestion ? `; e.g. ${JSON.stringify(suggestion)}` : ''),
    );
  }
}

/** A CPU quantity ("4", "3500m", "0.5") in cores. */
export function cpuCores(quantity: string): number {
  const m = /^(\d+(?:\.\d+)?)(m?)$/.exec(quantity.trim());
  if (!m) throw new UsageError(`trainer CPU ${JSON.stringify(quantity)}: not a CPU quantity (e.g. 4, 3500m, 0.5)`);
  return Number(m[1]) / (m[2] ? 1000 : 1);
}

export type RenderedObject = Secret | ConfigMap | PersistentVolumeClaim | StatefulSet | Service | Job;

/** The rendered objects, in apply order (the Secret first). Throws UsageError for a job id Kubernetes cannot use. */
export function renderKubernetes(config: JobConfig, o: RenderOptions = {}): RenderedObject[] {
  checkKubernetesJobId(config.job.id);
  const image = o.image ?? 'blip2-dist:latest';
  const namespace = o.namespace ?? 'default';
  const retries = o.retries ?? 4;
  const name = config.job.id;
  const labels = (component: string) => ({ 'app.kubernetes.io/name': 'blip2-dist', 'app.kubernetes.io/instance': name, 'app.kubernetes.io/component': component });
  const meta = (n: string, component: string) => ({ name: n, namespace, labels: labels(component) });
  const natsUrl = config.nats.url || `nats://${name}-nats.${namespace}.svc:${NATS_CLIENT_PORT}`;
  const trainerCpu = o.trainerCpu ?? '4';
  const cores = cpuCores(trainerCpu);
  if (cores <= 0) throw new UsageError(`trainer CPU ${JSON.stringify(trainerCpu)}: must be more than 0`);
  const trainerMemory = o.trainerMemory ?? '8Gi';
  const gpus = o.trainerGpus ?? 0;

  // The config the pods read: secrets out, paths on the data volume.
  const c = JSON.parse(JSON.stringify(config)) as JobConfig;
  const synthetic = config.data.root === `${config.job.runDir}/data`; // data.root left empty: the synthetic dataset
  c.job.token = '';
  c.nats = { ...c.nats, url: natsUrl, password: '', token: '' };
  c.job.runDir = `${DATA_MOUNT}/runs/${name}`;
  c.checkpoint.dir = `${c.job.runDir}/checkpoints`;
  c.data.root = `${DATA_MOUNT}/dataset`;
  c.data.tokenizer = `${DATA_MOUNT}/dataset/tokenizer.json`;
  c.node.id = '';
  c.grpc = { ...c.grpc, host: '0.0.0.0', advertiseHost: '', port: TRAINER_GRPC_PORT };
  c.metrics = { ...c.metrics, host: '0.0.0.0', port: 0 };
  c.launch = { ...c.launch, target: 'local' };
  const indexFile = `${c.data.root}/index.json`;

  const secretEnv: Record<string, string> = { BLIP2_JOB_TOKEN: config.job.token };
  if (config.nats.password) secretEnv.BLIP2_NATS_PASSWORD = config.nats.password;
  if (config.nats.token) secretEnv.BLIP2_NATS_TOKEN = config.nats.token;

  const volumes = [
    { name: 'data', persistentVolumeClaim: { claimName: `${name}-data` } },
    { name: 'config', configMap: { name: `${name}-config` } },
    { name: 'tmp', emptyDir: {} }, // tsx's compile cache; the root filesystem is read-only
  ];
  const mounts = [
    { name: 'data', mountPath: DATA_MOUNT },
    { name: 'config', mountPath: CONFIG_MOUNT, readOnly: true },
    { name: 'tmp', mountPath: '/tmp' },
  ];
  const containerSecurity = {
    runAsNonRoot: true, runAsUser: RUN_AS_USER, runAsGroup: RUN_AS_USER, allowPrivilegeEscalation: false,
    readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] },
  };
  const podSecurity = { runAsNonRoot: true, runAsUser: RUN_AS_USER, runAsGroup: RUN_AS_USER, fsGroup: RUN_AS_USER, seccompProfile: { type: 'RuntimeDefault' as const } };
  const resources = (cpu: string, memory: string, gpu = 0): IResourceRequirements => ({
    requests: { cpu, memory }, limits: { cpu, memory, ...(gpu > 0 ? { 'nvidia.com/gpu': String(gpu) } : {}) },
  });
  const shell = (script: string) => ['sh', '-c', script];
  /** Waits until the dataset's index is on the volume (the coordinator's init container writes or awaits it). */
  const waitForData = (why: string): IContainer => ({
    name: 'wait-for-data', image, workingDir: '/app', securityContext: containerSecurity, volumeMounts: mounts,
    resources: resources('100m', '128Mi'),
    command: shell(`until [ -f ${indexFile} ]; do echo "${why}"; sleep 5; done`),
  });
  // Probes on the metrics server: ready = joined and holding a generation, healthy = the main loop ran recently.
  // A training step holds the main thread for seconds (minutes on large presets), so liveness gives it 10 minutes,
  // the same patience as the heartbeat worker.
  const probes = (port: number): Pick<IContainer, 'readinessProbe' | 'livenessProbe' | 'startupProbe'> => {
    if (!config.metrics.enabled) return {};
    const get = (path: string, p: Partial<IProbe>): IProbe => ({ httpGet: { path, port }, timeoutSeconds: 10, ...p });
    return {
      startupProbe: get('/healthz', { periodSeconds: 10, failureThreshold: 60 }),
      readinessProbe: get('/readyz', { periodSeconds: 10, failureThreshold: 3 }),
      livenessProbe: get('/healthz', { periodSeconds: 30, failureThreshold: 20 }),
    };
  };
  const main = (component: string, entry: string, env: IEnvVar[], ports: IContainer['ports'], res: IResourceRequirements, port: number): IContainer => ({
    name: component,
    image,
    workingDir: '/app',
    command: ['node', '--import', 'tsx', entry, '--config', `${CONFIG_MOUNT}/job.json`],
    env: [{ name: 'BLIP2_LOG_FORMAT', value: 'json' }, ...env],
    envFrom: [{ secretRef: { name: `${name}-secrets` } }],
    ports,
    resources: res,
    securityContext: containerSecurity,
    volumeMounts: mounts,
    ...probes(port),
  });
  const scrape = (port: number) => (config.metrics.enabled ? { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(port), 'prometheus.io/path': '/metrics' } : undefined);
  // Exit 2 is bad input: retrying cannot help. A disruption (eviction, preemption, drain) is not the pod's fault.
  const failurePolicy = (container: string, onBadInput: 'FailJob'): IPodFailurePolicy => ({
    rules: [
      { action: onBadInput, onExitCodes: { containerName: container, operator: 'In', values: [2] } },
      { action: 'Ignore', onPodConditions: [{ type: 'DisruptionTarget', status: 'True' }] },
    ],
  });

  // The data: the synthetic dataset is generated by the coordinator's init container (skipped when it is already
  // there, so a replaced coordinator does not rewrite it); a dataset of your own is copied onto the volume while
  // the init container waits for it (README: `kubectl cp DIR <coordinator pod>:/data/dataset -c data`).
  const dataInit: IContainer = synthetic
    ? {
      name: 'data', image, workingDir: '/app', securityContext: containerSecurity, volumeMounts: mounts, resources: resources('1', '1Gi'),
      command: shell(
        `[ -f ${indexFile} ] || exec node bin/blip2.js data synth --out ${c.data.root} --samples ${config.data.synthSamples} ` +
          `--image-size ${config.data.synthImageSize} --shard-size ${config.data.samplesPerShard * 2} --seed ${config.train.seed}`,
      ),
    }
    : { ...waitForData(`waiting for ${indexFile}: copy the dataset with kubectl cp DIR <this pod>:${c.data.root} -c data`), name: 'data' };

  // The engine's threads follow the CPU limit (by default it takes one per core of the node, up to 8), unless the
  // config names them.
  const threadEnv: IEnvVar[] = [];
  if (config.engine.threads === 0) threadEnv.push({ name: 'BLIP2_ENGINE_THREADS', value: String(Math.min(8, Math.max(1, Math.floor(cores)))) });
  if (config.engine.matmulThreads === 0) threadEnv.push({ name: 'BLIP2_ENGINE_MATMUL_THREADS', value: String(Math.min(64, Math.max(1, Math.floor(cores)))) });

  const objects: RenderedObject[] = [
    new Secret({ metadata: meta(`${name}-secrets`, 'secrets'), type: 'Opaque', stringData: secretEnv }),
    new ConfigMap({ metadata: meta(`${name}-config`, 'config'), data: { 'job.json': JSON.stringify(c, null, 2) + '\n' } }),
    new PersistentVolumeClaim({
      metadata: meta(`${name}-data`, 'data'),
      spec: {
        accessModes: ['ReadWriteMany'], resources: { requests: { storage: o.dataVolumeSize ?? '20Gi' } },
        ...(o.storageClass ? { storageClassName: o.storageClass } : {}),
      },
    }),
  ];
  if (!config.nats.url) {
    objects.push(
      new StatefulSet({
        metadata: meta(`${name}-nats`, 'nats'),
        spec: {
          serviceName: `${name}-nats`, replicas: 1, selector: { matchLabels: labels('nats') },
          template: {
            metadata: { labels: labels('nats') },
            spec: {
              securityContext: podSecurity,
              containers: [{
                name: 'nats', image: 'nats:2.10-alpine',
                command: ['nats-server'], args: ['-js', '-sd', '/store', '-p', String(NATS_CLIENT_PORT), '-m', '8222'],
                ports: [{ name: 'client', containerPort: NATS_CLIENT_PORT }, { name: 'monitor', containerPort: 8222 }],
                resources: resources('250m', '512Mi'),
                securityContext: containerSecurity,
                readinessProbe: { httpGet: { path: '/healthz', port: 8222 }, periodSeconds: 5 },
                livenessProbe: { httpGet: { path: '/healthz', port: 8222 }, periodSeconds: 30, failureThreshold: 4 },
                volumeMounts: [{ name: 'store', mountPath: '/store' }],
              }],
            },
          },
          volumeClaimTemplates: [{ metadata: { name: 'store' }, spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '2Gi' } } } }],
        },
      }),
      new Service({
        metadata: meta(`${name}-nats`, 'nats'),
        spec: { selector: labels('nats'), ports: [{ name: 'client', port: NATS_CLIENT_PORT, targetPort: NATS_CLIENT_PORT }] },
      }),
    );
  }

  const coordinatorPod: IPodSpec = {
    restartPolicy: 'Never',
    securityContext: podSecurity,
    initContainers: [dataInit],
    containers: [main('coordinator', 'coordinator/main.ts', [
      { name: 'BLIP2_NODE_ID', value: 'coordinator' }, { name: 'BLIP2_METRICS_PORT', value: String(COORDINATOR_METRICS_PORT) },
    ], [{ name: 'metrics', containerPort: COORDINATOR_METRICS_PORT }], resources('500m', '1Gi'), COORDINATOR_METRICS_PORT)],
    volumes,
  };
  const maxFailedIndexes = config.world.trainers - Math.min(config.world.min, config.world.trainers);
  const trainerPod: IPodSpec = {
    restartPolicy: 'Never',
    subdomain: `${name}-trainer`, // hostname <job>-trainer-<index>.<job>-trainer: the headless Service's names
    securityContext: podSecurity,
    initContainers: [waitForData(`waiting for ${indexFile} (the coordinator's data init container puts it there)`)],
    containers: [main('trainer', 'trainer/main.ts', [
      { name: 'JOB_INDEX', valueFrom: { fieldRef: { fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']" } } },
      { name: 'BLIP2_NODE_ID', value: `${name}-trainer-$(JOB_INDEX)` },
      { name: 'BLIP2_GRPC_ADVERTISE_HOST', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
      { name: 'BLIP2_METRICS_PORT', value: String(TRAINER_METRICS_PORT) },
      ...threadEnv,
    ], [{ name: 'grpc', containerPort: TRAINER_GRPC_PORT }, { name: 'metrics', containerPort: TRAINER_METRICS_PORT }],
    resources(trainerCpu, trainerMemory, gpus), TRAINER_METRICS_PORT)],
    volumes,
    // Spread the trainers over nodes where the cluster can: the collective's bandwidth is per node.
    affinity: {
      podAntiAffinity: {
        preferredDuringSchedulingIgnoredDuringExecution: [{
          weight: 100, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: labels('trainer') } },
        }],
      },
    },
  };
  objects.push(
    new Job({
      metadata: meta(`${name}-coordinator`, 'coordinator'),
      spec: {
        completions: 1, parallelism: 1, backoffLimit: retries, podReplacementPolicy: 'Failed',
        podFailurePolicy: failurePolicy('coordinator', 'FailJob'),
        template: { metadata: { labels: labels('coordinator'), annotations: scrape(COORDINATOR_METRICS_PORT) }, spec: coordinatorPod },
      },
    }),
    new Service({
      metadata: meta(`${name}-trainer`, 'trainer'),
      spec: {
        clusterIP: 'None', publishNotReadyAddresses: true, selector: labels('trainer'),
        ports: [{ name: 'grpc', port: TRAINER_GRPC_PORT }, { name: 'metrics', port: TRAINER_METRICS_PORT }],
      },
    }),
    new Job({
      metadata: meta(`${name}-trainer`, 'trainer'),
      spec: {
        completionMode: 'Indexed', completions: config.world.trainers, parallelism: config.world.trainers,
        backoffLimitPerIndex: retries, ...(maxFailedIndexes > 0 ? { maxFailedIndexes } : {}), podReplacementPolicy: 'Failed',
        podFailurePolicy: failurePolicy('trainer', 'FailJob'),
        successPolicy: { rules: [{ succeededCount: 1 }] },
        template: { metadata: { labels: labels('trainer'), annotations: scrape(TRAINER_METRICS_PORT) }, spec: trainerPod },
      },
    }),
  );
  // Every object against the Kubernetes schemas (a bad quantity such as --trainer-memory 8GB is caught here).
  for (const obj of objects) {
    try {
      obj.validate();
    } catch (e) {
      throw new UsageError(`the rendered ${obj.kind} ${obj.metadata?.name} is not valid Kubernetes: ${(e as Error).message}`);
    }
  }
  return objects;
}

/** One YAML stream (documents separated by `---`). */
export function toYaml(objects: RenderedObject[]): string {
  return objects.map((obj) => stringify(obj.toJSON())).join('---\n');
}

/** The job's objects as one YAML stream. */
export function renderKubernetesYaml(config: JobConfig, o: RenderOptions = {}): string {
  return toYaml(renderKubernetes(config, o));
}
