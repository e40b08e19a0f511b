// The job config: sources and their precedence (defaults < file < env < flags), and every validation rule.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { ConfigError, configKeys, engineConfigFromEnv, envNameOf, envOf, loadJobConfig } from './config';

const dir = mkdtempSync(join(tmpdir(), 'blip2-config-'));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};
const fails = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error('expected a ConfigError');
};

describe('sources and precedence', () => {
  test('defaults < YAML file < env < flags', () => {
    const yaml = file('a.yaml', 'job: {id: run-1}\ntrain:\n  epochs: 3\n  seed: 1\n  batchSizePerTrainer: 2\n');
    const { config } = loadJobConfig({
      file: yaml,
      env: { BLIP2_TRAIN_EPOCHS: '5', BLIP2_TRAIN_SEED: '2' },
      argv: ['--train.seed=7', '--job.token', '0123'],
    });
    expect(config.job.id).toBe('run-1'); // file
    expect(config.train.batchSizePerTrainer).toBe(2); // file
    expect(config.train.epochs).toBe(5); // env over file
    expect(config.train.seed).toBe(7); // flag over env
    expect(config.job.token).toBe('0123'); // strings stay strings
    expect(config.optim.weightDecay).toBe(0.05); // default
    expect(config.job.runDir).toMatch(/runs\/run-1$/);
    expect(config.checkpoint.dir).toBe(join(config.job.runDir, 'checkpoints'));
  });

  test('JSON file, relative paths resolved against the file', () => {
    const json = file('b.json', JSON.stringify({ job: { runDir: 'out' }, data: { root: 'data', datasets: ['coco', 'vg'] } }));
    const { config } = loadJobConfig({ file: json, env: { BLIP2_DATA_WORKERS: '2' } });
    expect(config.job.runDir).toBe(join(dir, 'out'));
    expect(config.data.root).toBe(join(dir, 'data'));
    expect(config.data.tokenizer).toBe(join(dir, 'data', 'tokenizer.json'));
    expect(config.data.datasets).toEqual(['coco', 'vg']);
    expect(loadJobConfig({ env: { BLIP2_DATA_DATASETS: 'a, b' } }).config.data.datasets).toEqual(['a', 'b']);
  });

  test('overrides apply unless env or a flag sets the key', () => {
    const { config } = loadJobConfig({ env: { BLIP2_NODE_ID: 'from-env' }, overrides: { 'node.id': 'x', 'job.token': 'gen' } });
    expect(config.node.id).toBe('from-env');
    expect(config.job.token).toBe('gen');
  });

  test('every key has an env var', () => {
    expect(configKeys()).toContain('train.batchSizePerTrainer');
    expect(envNameOf('train.batchSizePerTrainer')).toBe('BLIP2_TRAIN_BATCH_SIZE_PER_TRAINER');
    expect(envNameOf('grpc.tls.certFile')).toBe('BLIP2_GRPC_TLS_CERT_FILE');
  });
});

describe('engine section', () => {
  test('keeps the engine\'s env names (BLIP2_ENGINE is the backend); defaults leave the choice to the engine', () => {
    expect(envOf('engine.backend')).toBe('BLIP2_ENGINE');
    expect(envOf('engine.wasmThreads')).toBe('BLIP2_ENGINE_WASM_THREADS');
    expect(loadJobConfig({ env: {} }).config.engine).toEqual({ backend: 'auto', threads: 0, matmul: 'auto', matmulThreads: 0, wasmThreads: 0 });
    const env = { BLIP2_ENGINE: 'cpu', BLIP2_ENGINE_THREADS: '3', BLIP2_ENGINE_MATMUL: 'xnnpack', BLIP2_ENGINE_MATMUL_THREADS: '12', BLIP2_ENGINE_WASM_THREADS: '1' };
    const want = { backend: 'cpu', threads: 3, matmul: 'xnnpack', matmulThreads: 12, wasmThreads: 1 };
    expect(loadJobConfig({ env }).config.engine).toEqual(want);
    expect(engineConfigFromEnv(env)).toEqual(want);
    expect(loadJobConfig({ env, argv: ['--engine.threads', '2'] }).config.engine.threads).toBe(2);
  });

  test('bad values are refused, naming the key and the value', () => {
    expect(fails(() => loadJobConfig({ env: { BLIP2_ENGINE: 'webgl' } }))).toMatch(/engine\.backend: must be one of the possible values.*value was "webgl"/);
    expect(fails(() => engineConfigFromEnv({ BLIP2_ENGINE_THREADS: '9' }))).toMatch(/engine\.threads: must be an integer in \[0, 8\].*value was 9/);
    expect(fails(() => engineConfigFromEnv({ BLIP2_ENGINE_MATMUL_THREADS: '2.5' }))).toMatch(/engine\.matmulThreads/);
  });
});

describe('strict validation names the key, the value and the rule', () => {
  test.each([
    [{ argv: ['--train.epochs', '3.5'] }, /train\.epochs: must be an integer >= 1: value was "3\.5"/],
    [{ env: { BLIP2_TRAIN_BATCH_SIZE_PER_TRAINER: 'abc' } }, /train\.batchSizePerTrainer: must be an integer >= 1: value was "abc"/],
    [{ argv: ['--model.preset', 'huge'] }, /model\.preset: must be one of the possible values: \["tiny","demo","small","base","blip2-opt-2.7b","blip2-opt-6.7b"\]: value was "huge"/],
    [{ argv: ['--optim.beta2', '1'] }, /optim\.beta2: must be a number in \[0, 1\): value was 1/],
    [{ argv: ['--grpc.port', '70000'] }, /grpc\.port: must be a TCP port.*value was 70000/],
    [{ argv: ['--nats.url', 'http://x:4222'] }, /nats\.url: must be empty .*value was "http:\/\/x:4222"/],
    [{ argv: ['--metrics.enabled', 'yes'] }, /metrics\.enabled: must be true or false: value was "yes"/],
    [{ argv: ['--data.datasets', 'coco,co co'] }, /data\.datasets: dataset name "co co" must match/],
    [{ argv: ['--world.min', '5', '--world.max', '2'] }, /world\.min \(5\) must be <= world\.max \(2\)/],
    [{ argv: ['--membership.heartbeatMs', '900', '--membership.timeoutMs', '1000'] }, /membership\.timeoutMs \(1000\) must be at least twice/],
    [{ argv: ['--grpc.tls.certFile', 'a.pem'] }, /must be set together/],
    [{ argv: ['--train.epoch', '3'] }, /config flag "--train.epoch": unknown key/],
    [{ argv: ['--train.stage', '3'] }, /train\.stage: must be 1 \(representation learning.*or 2 \(generative.*value was 3/],
    [{ argv: ['train.epochs=3'] }, /expected --<key> <value>/],
  ])('%j', (o, re) => {
    expect(fails(() => loadJobConfig({ env: {}, ...o }))).toMatch(re);
  });

  test('an unknown key in a file, at any depth, is named with its path', () => {
    const p = file('c.yaml', 'train: {epochs: 2, bogus: 1}\nfoo: 2\n');
    const msg = fails(() => loadJobConfig({ file: p, env: {} }));
    expect(msg).toContain(`config file ${p}: unknown key(s): train.bogus, foo`);
  });

  test('a falsy bad value is still quoted, and the file is named', () => {
    const p = file('d.yaml', 'train: {epochs: 0}\n');
    expect(fails(() => loadJobConfig({ file: p, env: {} }))).toMatch(new RegExp(`config file ${p} is invalid[^]*train\\.epochs: must be an integer >= 1: value was 0`));
  });

  test('a missing file and broken YAML are refused', () => {
    expect(fails(() => loadJobConfig({ file: join(dir, 'nope.yaml'), env: {} }))).toMatch(/nope\.yaml: not found/);
    const p = file('e.yaml', 'train: [1, 2\n');
    expect(fails(() => loadJobConfig({ file: p, env: {} }))).toMatch(/not valid YAML/);
  });
});

test('print() masks secrets and shows the rest', () => {
  const loaded = loadJobConfig({ env: {}, argv: ['--job.token', 's3cret', '--nats.password', 'pw', '--train.epochs', '4'] });
  const text = loaded.print();
  expect(text).not.toContain('s3cret');
  expect(text).not.toContain('"pw"');
  const printed = JSON.parse(text);
  expect(printed.job.token).toBe('[Sensitive]');
  expect(printed.nats.password).toBe('[Sensitive]');
  expect(printed.nats.token).toBe(''); // unset secrets stay visibly unset
  expect(printed.train.epochs).toBe(4);
});

test('the example job configs of deploy/examples/ are valid, with their paths resolved against the file', () => {
  const dir = join(import.meta.dirname, '..', 'deploy', 'examples');
  for (const f of ['synth-stage1.yaml', 'synth-stage2.yaml']) {
    const { config } = loadJobConfig({ file: join(dir, f), env: {} });
    expect(config.job.runDir).toBe(join(dir, '..', '..', 'runs', f.replace('.yaml', '')));
  }
  const { config } = loadJobConfig({ file: join(dir, 'synth-stage2.yaml'), env: {} });
  expect(config.train.stage).toBe(2);
  expect(config.model.checkpoint).toBe(join(dir, '..', '..', 'runs', 'synth-stage1'));
  expect(config.data.lmTokenizer).toBe(join(dir, '..', '..', 'runs', 'synth-stage1', 'data', 'opt-tokenizer', 'tokenizer.json'));
});
