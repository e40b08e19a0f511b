/**
 * The rendered Kubernetes manifests run a job to the end: every container of every rendered workload (the NATS
 * StatefulSet, the coordinator Job with its data init container, each index of the trainer Indexed Job with its
 * wait-for-data init container) is run as a local process with its own command, args, working directory and
 * environment (env with $(VAR) expansion, the Downward API fields, the Secret through envFrom), init containers
 * before the main one, as the kubelet would. What a cluster gives each pod and one machine cannot is adapted, and
 * only that: the volume mounts become folders (mountPath prefixes rewritten in args, env and the ConfigMap), each
 * pod's own network becomes free local ports (NATS client/monitor, metrics, gRPC), status.podIP is 127.0.0.1, and
 * the Service DNS name in nats.url is the local NATS address. The job must finish with every process exiting 0,
 * and the coordinator Job's pod started again on the finished job (a re-applied or replaced pod) must exit 0 at
 * once without rewriting the dataset: no crash loop.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { afterAll, expect, test } from 'vitest';
import { renderKubernetesTarget, freePort } from '../cli';

const repoRoot = resolve(import.meta.dirname, '..');
type Doc = Record<string, any>;

interface PodRun {
  name: string;
  /** Exit code of each container in order (init containers first); resolves when the last one exits or one fails. */
  done: Promise<number[]>;
  output(): string;
}

const running = new Set<ChildProcess>();
afterAll(() => {
  for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
});

test('each rendered container, run as a local process, takes the job to its end; a restarted coordinator does not crash-loop', async () => {
  const root = mkdtempSync(join(tmpdir(), 'blip2-k8s-run-'));
  const renderDir = join(root, 'render');
  const files = renderKubernetesTarget({
    renderDir, image: 'blip2-dist:test', namespace: 'ml', trainerCpu: '1', trainerMemory: '2Gi', env: {},
    configArgs: [
      '--job.id', 'k8s-local', '--model.preset', 'tiny', '--engine.backend', 'cpu', '--world.trainers', '2', '--world.min', '1',
      '--train.epochs', '1', '--train.batchSizePerTrainer', '4', '--data.synthSamples', '20', '--data.synthImageSize', '16',
      '--data.samplesPerShard', '4', '--checkpoint.intervalSteps', '2', '--optim.warmupSteps', '1',
      '--membership.heartbeatMs', '200', '--membership.timeoutMs', '5000', '--world.rendezvousSettleMs', '3000',
    ],
  });
  const docs = [files.secret, files.manifests].flatMap((f) => parseAllDocuments(readFileSync(f, 'utf8')).map((d) => d.toJS() as Doc));
  const find = (kind: string, name: string) => {
    const d = docs.find((x) => x.kind === kind && x.metadata.name === name);
    if (!d) throw new Error(`${kind}/${name} not rendered`);
    return d;
  };
  const secret = find('Secret', 'k8s-local-secrets').stringData as Record<string, string>;

  // Volumes as folders.
  const dataDir = join(root, 'volume-data');
  const configDir = join(root, 'volume-config');
  const natsStore = join(root, 'volume-nats-store');
  for (const d of [dataDir, configDir, natsStore]) mkdirSync(d, { recursive: true });
  const natsPort = await freePort();
  const monitorPort = await freePort();
  const natsUrl = `nats://127.0.0.1:${natsPort}`;

  // The ConfigMap as the pods see it, with the pod network adapted: NATS at its local port, gRPC on a free port.
  const configMap = find('ConfigMap', 'k8s-local-config');
  const jobJson = JSON.parse(configMap.data['job.json']);
  expect(jobJson.nats.url).toBe('nats://k8s-local-nats.ml.svc:4222');
  jobJson.nats.url = natsUrl;
  jobJson.grpc.port = 0;
  writeFileSync(join(configDir, 'job.json'), JSON.stringify(jobJson, null, 2).replaceAll('"/data/', `"${dataDir}/`));

  const volumeDirs: Record<string, string> = { data: dataDir, config: configDir, tmp: join(root, 'tmp'), store: natsStore };
  mkdirSync(volumeDirs.tmp!, { recursive: true });
  const localPorts: Record<string, string> = { '4222': String(natsPort), '8222': String(monitorPort), '9400': '0', '9401': '0' };

  /** Runs one container as a process, as the kubelet would; resolves with its exit code. */
  const runContainer = (pod: string, c: Doc, fields: Record<string, string>, log: { text: string }): Promise<number> => {
    const mounts = (c.volumeMounts ?? []) as { name: string; mountPath: string }[];
    // One pass over every mount path (a folder replacing one path must not be rewritten by the next).
    const byPath = new Map(mounts.map((m) => [m.mountPath, volumeDirs[m.name]!]));
    const pattern = new RegExp(`(?<![\\w/.-])(${[...byPath.keys()].map((k) => k.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')).join('|')})(?=/|\\b|$)`, 'g');
    const local = (s: string) => (byPath.size ? s.replace(pattern, (m) => byPath.get(m)!) : s);
    const env: Record<string, string> = { PATH: `${dirname(process.execPath)}:${process.env.PATH}`, HOME: root };
    for (const from of c.envFrom ?? []) {
      expect(from.secretRef.name).toBe('k8s-local-secrets');
      Object.assign(env, secret);
    }
    for (const e of c.env ?? []) {
      if (e.valueFrom) {
        const field = e.valueFrom.fieldRef.fieldPath as string;
        if (!(field in fields)) throw new Error(`${pod}/${c.name}: no value for the Downward API field ${field}`);
        env[e.name] = fields[field]!;
      } else env[e.name] = (e.value as string).replace(/\$\((\w+)\)/g, (_, v: string) => env[v] ?? `$(${v})`);
    }
    if (env.BLIP2_METRICS_PORT) env.BLIP2_METRICS_PORT = localPorts[env.BLIP2_METRICS_PORT]!;
    const argv = [...(c.command ?? []), ...(c.args ?? [])].map((a: string, i: number, all: string[]) =>
      i > 0 && all[i - 1]!.match(/^-[pm]$/) ? localPorts[a] ?? a : local(a));
    const cmd = argv[0] === 'node' ? process.execPath : argv[0]!;
    const cwd = c.workingDir === '/app' ? repoRoot : c.workingDir ?? root;
    return new Promise((resolveExit) => {
      const p = spawn(cmd, argv.slice(1), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
      running.add(p);
      const add = (d: Buffer) => (log.text += d.toString());
      p.stdout!.on('data', add);
      p.stderr!.on('data', add);
      p.once('exit', (code, signal) => {
        log.text += `[${pod}/${c.name} exited ${code ?? signal}]\n`;
        resolveExit(code ?? 128);
      });
    });
  };
  const runPod = (name: string, spec: Doc, fields: Record<string, string>): PodRun => {
    const log = { text: '' };
    const done = (async () => {
      const codes: number[] = [];
      for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
        codes.push(await runContainer(name, c, fields, log));
        if (codes.at(-1) !== 0) break;
      }
      return codes;
    })();
    return { name, done, output: () => log.text };
  };

  // NATS as the StatefulSet runs it.
  const natsSet = find('StatefulSet', 'k8s-local-nats');
  const natsPod = runPod('k8s-local-nats-0', natsSet.spec.template.spec, {});
  const natsUp = async () => {
    for (let i = 0; i < 100; i++) {
      try {
        if ((await fetch(`http://127.0.0.1:${monitorPort}/healthz`)).ok) return;
      } catch { /* not yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`nats-server did not come up:\n${natsPod.output()}`);
  };
  await natsUp();

  // The coordinator Job's pod and each index of the trainer Job, started together as the controllers would.
  const coordinatorJob = find('Job', 'k8s-local-coordinator');
  const trainerJob = find('Job', 'k8s-local-trainer');
  expect(trainerJob.spec.completions).toBe(2);
  const podFields = (podName: string, index?: number): Record<string, string> => ({
    'metadata.name': podName, 'status.podIP': '127.0.0.1',
    ...(index === undefined ? {} : { "metadata.annotations['batch.kubernetes.io/job-completion-index']": String(index) }),
  });
  const coordinator = runPod('k8s-local-coordinator-x1', coordinatorJob.spec.template.spec, podFields('k8s-local-coordinator-x1'));
  const trainers = [0, 1].map((i) => runPod(`k8s-local-trainer-${i}-x1`, trainerJob.spec.template.spec, podFields(`k8s-local-trainer-${i}-x1`, i)));
  const all = [coordinator, ...trainers];
  const outputs = () => all.map((p) => `--- ${p.name}\n${p.output().slice(-3000)}`).join('\n');
  const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`the job did not end within 240 s:\n${outputs()}`)), 240_000).unref());
  const codes = await Promise.race([Promise.all(all.map((p) => p.done)), timeout]);
  expect(codes, outputs()).toEqual([[0, 0], [0, 0], [0, 0]]);

  // The data init container wrote the dataset onto the volume; the trainers, as rendered node ids, trained it.
  const index = join(dataDir, 'dataset', 'index.json');
  expect(existsSync(index)).toBe(true);
  expect(coordinator.output()).toMatch(/wrote .*volume-data\/dataset\/index\.json/);
  expect(trainers[1]!.output()).toContain('k8s-local-trainer-1');
  const checkpoints = readdirSync(join(dataDir, 'runs', 'k8s-local', 'checkpoints')).filter((d) => d.startsWith('step-'));
  expect(checkpoints.length).toBeGreaterThan(0);
  expect(coordinator.output()).toMatch(/job finished/);

  // The coordinator Job's pod again (re-applied, or replaced): the dataset is kept, the coordinator exits 0 at once.
  const indexTime = statSync(index).mtimeMs;
  const again = runPod('k8s-local-coordinator-x2', coordinatorJob.spec.template.spec, podFields('k8s-local-coordinator-x2'));
  const againCodes = await Promise.race([again.done, timeout]);
  expect(againCodes, again.output()).toEqual([0, 0]);
  expect(again.output()).toMatch(/job state recovered from KV.*finished/);
  expect(statSync(index).mtimeMs).toBe(indexTime);
  expect(again.output()).not.toContain('wrote');
});
