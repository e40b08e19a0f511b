// The `blip2` subcommands about jobs: `launch` (on this machine, or rendered for Kubernetes), `status` (a job's state
// from NATS KV) and `config`.
import { Option, type Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { describeConfigKeys, loadJobConfig, UsageError, type JobConfig } from '../common';
import { renderKubernetesTarget } from './kubernetes';
import { formatJobStatus, readJobStatus } from './job-status';
import { DEMO_OVERRIDES, launchLocal, natsFileOf } from './launcher';

/**
 * With no nats.url, a job that `blip2 launch` runs on its own nats-server: its URL and user from <runDir>/nats.json
 * (mode 0600, readable by the user who launched it).
 */
function useLaunchedNats(config: JobConfig): void {
  const file = natsFileOf(config);
  if (config.nats.url || !existsSync(file)) return;
  let saved: { url?: unknown; user?: unknown; password?: unknown };
  try {
    saved = JSON.parse(readFileSync(file, 'utf8')) as typeof saved;
  } catch (e) {
    throw new UsageError(`${file}: ${(e as Error).message}`);
  }
  if (typeof saved.url !== 'string' || typeof saved.user !== 'string' || typeof saved.password !== 'string') {
    throw new UsageError(`${file}: needs url, user and password (written by blip2 launch)`);
  }
  Object.assign(config.nats, { url: saved.url, user: saved.user, password: saved.password });
}

const CONFIG_FLAGS_HELP = `
Any job config key can be given as a flag after the options: --<key> <value> or --<key>=<value>,
e.g. --train.epochs 3 --world.trainers 4. Precedence: file < environment (BLIP2_<KEY>) < flags.
\`blip2 config --keys\` lists every key with its environment variable, default and meaning.
`;

/** Subcommands about jobs: `launch`, `status`, `config`. */
export function registerJobCommands(program: Command): void {
  program
    .command('launch')
    .description(
      'Run a training job: starts a nats-server (unless nats.url is set), the coordinator and world.trainers ' +
        'trainer processes, shows progress (step, epoch, samples/s, losses, ETA) and ends with a summary. ' +
        'With no --config it runs the built-in demo: the synthetic dataset generated into runs/blip2-demo/data, ' +
        'the tiny preset, 2 trainers. Ctrl-C stops after the next committed checkpoint; launching the same job ' +
        'again continues it.',
    )
    .option('--config <file>', 'job config, YAML or JSON (default: the built-in demo)')
    .addOption(new Option('--target <target>', 'where to run the job').choices(['local', 'kubernetes']).default('local'))
    .option('--render-dir <dir>', 'with --target kubernetes: write the manifests there (then `kubectl apply -f <dir>`)')
    .option('--image <image>', 'with --target kubernetes: container image holding this repository', 'blip2-dist:latest')
    .option('--namespace <ns>', 'with --target kubernetes: namespace', 'default')
    .addOption(new Option('--trainer-entry <script>', 'trainer entry script (tests)').default('trainer/main.ts').hideHelp())
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .addHelpText('after', CONFIG_FLAGS_HELP)
    .action(async (opts: { config?: string; target: string; trainerEntry: string; renderDir?: string; image: string; namespace: string }, cmd: Command) => {
      if (opts.target === 'kubernetes') {
        const file = renderKubernetesTarget({
          configFile: opts.config, configArgs: cmd.args, renderDir: opts.renderDir, image: opts.image, namespace: opts.namespace,
        });
        process.stdout.write(`wrote ${file} (it holds the job token in a Secret); apply with: kubectl apply -f ${file}\n`);
        return;
      }
      const summary = await launchLocal({ configFile: opts.config, configArgs: cmd.args, trainerEntry: opts.trainerEntry });
      process.exitCode = summary.status === 'finished' || summary.status === 'stopped' ? 0 : 1;
    });

  program
    .command('status')
    .description(
      'Show a running or finished job\'s state from NATS KV: status, generation, world (ranks and node ids), epoch, ' +
        'last committed step and checkpoint with its age. The NATS server is nats.url of the config (or ' +
        '--nats.url); with no --config, the built-in demo\'s job. Exit 2 when the job does not exist, 1 when NATS ' +
        'does not answer.',
    )
    .option('--config <file>', 'job config, YAML or JSON (default: the built-in demo)')
    .option('--job <id>', 'job id (default: job.id of the config)')
    .option('--json', 'print the state as JSON')
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .addHelpText('after', CONFIG_FLAGS_HELP)
    .action(async (opts: { config?: string; job?: string; json?: boolean }, cmd: Command) => {
      const { config } = loadJobConfig({ file: opts.config, argv: cmd.args, overrides: opts.config ? {} : DEMO_OVERRIDES });
      useLaunchedNats(config);
      const report = await readJobStatus(config, { jobId: opts.job });
      process.stdout.write((opts.json ? JSON.stringify(report, null, 2) : formatJobStatus(report)) + '\n');
    });

  program
    .command('config')
    .description('Show or check the resolved job configuration (file < environment < flags), secrets masked.')
    .option('--config <file>', 'job config, YAML or JSON')
    .option('--print', 'print the resolved configuration as JSON (the default)')
    .option('--check', 'only validate: exit 0 and print "ok", or exit 2 naming the key, the value and the rule')
    .option('--keys', 'list every key with its environment variable, default and meaning')
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .addHelpText('after', CONFIG_FLAGS_HELP)
    .action((opts: { config?: string; print?: boolean; check?: boolean; keys?: boolean }, cmd: Command) => {
      if (opts.keys) {
        process.stdout.write(describeConfigKeys() + '\n');
        return;
      }
      const loaded = loadJobConfig({ file: opts.config, argv: cmd.args });
      process.stdout.write(opts.check && !opts.print ? 'ok\n' : loaded.print() + '\n');
    });
}
