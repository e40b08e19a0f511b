// The `blip2` subcommands about jobs: `launch` (on this machine, or rendered for Kubernetes), `join` (one more trainer
// for a launched job), `status` (a job's state from NATS KV), `stop`, `report` (a run's charts as an HTML page and
// PNGs) and `config`.
import { Option, type Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describeConfigKeys, loadJobConfig, UsageError, type JobConfig } from '../common';
import { DEMO_LM, DEMO_OVERRIDES, DEMO_PHASES, natsFileOf, parseDemoPhases, REPORT_CHARTS } from './defaults';

// Each command's implementation (the Kubernetes renderer, the launcher, the demo, NATS clients, the chart renderer)
// is imported by its action, so `blip2 --help` and the other commands start without it.

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

interface LaunchFlags {
  config?: string; target: string; trainerEntry: string; renderDir?: string; image: string; namespace: string;
  trainerCpu: string; trainerMemory: string; gpus: string; storageClass?: string; dataVolumeSize: string;
  phases?: string; lmSteps?: string;
}

const CONFIG_FLAGS_HELP = `
Any job config key can be given as a flag after the options: --<key> <value> or --<key>=<value>,
e.g. --train.epochs 3 --world.trainers 4. Precedence: file < environment (BLIP2_<KEY>) < flags.
\`blip2 config --keys\` lists every key with its environment variable, default and meaning.
`;

/** Subcommands about jobs: `launch`, `status`, `stop`, `report`, `config`. */
export function registerJobCommands(program: Command): void {
  program
    .command('launch')
    .description(
      'Run a training job: starts a nats-server (unless nats.url is set), the coordinator and world.trainers ' +
        'trainer processes, shows progress (step, epoch, samples/s, losses, ETA) and ends with a summary. ' +
        'With no --config it runs the built-in demo: the synthetic dataset generated into runs/blip2-demo/data, ' +
        'stage 1 (the demo preset, 2 trainers), the frozen language model pre-trained on the captions, stage 2 from ' +
        'stage 1 (runs/blip2-demo/stage2), then retrieval, caption and VQA figures on the held-out split beside their ' +
        'chance level or baseline. Ctrl-C stops after the next committed checkpoint; launching the same job ' +
        'again continues it (the demo: from the phase it stopped in). A trainer, the coordinator or the nats-server ' +
        'that dies before the job ends is restarted (launch.restarts times in a row each, after launch.backoffMs, ' +
        'doubled each time; the count starts again after launch.restartsResetMs up); a committed checkpoint that ' +
        'fails its checksums sends the job back to the previous valid one; <run-dir>/launch.lock lets the next ' +
        'launch stop what a killed launcher left running.',
    )
    .option('--config <file>', 'job config, YAML or JSON (default: the built-in demo)')
    .addOption(new Option('--target <target>', 'where to run the job').choices(['local', 'kubernetes']).default('local'))
    .option('--render-dir <dir>', 'with --target kubernetes: write the manifests there (then `kubectl apply -f <dir>`)')
    .option('--image <image>', 'with --target kubernetes: container image holding this repository', 'blip2-dist:latest')
    .option('--namespace <ns>', 'with --target kubernetes: namespace', 'default')
    .option('--trainer-cpu <cpu>', 'with --target kubernetes: CPU request and limit per trainer; the engine threads follow it', '4')
    .option('--trainer-memory <mem>', 'with --target kubernetes: memory request and limit per trainer', '8Gi')
    .option('--gpus <n>', 'with --target kubernetes: nvidia.com/gpu per trainer (with the GPU image)', '0')
    .option('--storage-class <class>', 'with --target kubernetes: storage class of the ReadWriteMany data volume')
    .option('--data-volume-size <size>', 'with --target kubernetes: size of the data volume', '20Gi')
    .option('--phases <list>', `with no --config: the demo's phases to run, comma-separated (${DEMO_PHASES.join(', ')}; default all)`)
    .option('--lm-steps <n>', `with no --config: steps of the demo's language model pre-training (default ${DEMO_LM.steps})`)
    .addOption(new Option('--trainer-entry <script>', 'trainer entry script (tests)').default('trainer/main.ts').hideHelp())
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .addHelpText('after', CONFIG_FLAGS_HELP)
    .action(async (opts: LaunchFlags, cmd: Command) => {
      if (opts.target === 'kubernetes') {
        const gpus = Number(opts.gpus);
        if (!Number.isInteger(gpus) || gpus < 0) throw new UsageError(`--gpus must be an integer >= 0, got ${JSON.stringify(opts.gpus)}`);
        const { renderKubernetesTarget } = await import('./kubernetes');
        const files = renderKubernetesTarget({
          configFile: opts.config, configArgs: cmd.args, renderDir: opts.renderDir, image: opts.image, namespace: opts.namespace,
          trainerCpu: opts.trainerCpu, trainerMemory: opts.trainerMemory, trainerGpus: gpus, storageClass: opts.storageClass,
          dataVolumeSize: opts.dataVolumeSize,
        });
        process.stdout.write(
          `wrote ${files.manifests} and ${files.secret} (the job token, mode 0600; ${files.tokenKept ? 'kept from the earlier render' : 'new'})\n` +
            `apply with: kubectl apply -f ${opts.renderDir}\n`,
        );
        return;
      }
      if (!opts.config) {
        // The built-in demo: stage 1, the frozen LM, stage 2, evaluation (cli/demo.ts).
        let lmSteps: number | undefined;
        if (opts.lmSteps !== undefined) {
          lmSteps = Number(opts.lmSteps);
          if (!/^\d+$/.test(opts.lmSteps) || lmSteps < 1) throw new UsageError(`--lm-steps must be an integer >= 1, got ${JSON.stringify(opts.lmSteps)}`);
        }
        const phases = opts.phases === undefined ? undefined : parseDemoPhases(opts.phases);
        const { launchDemo } = await import('./demo');
        const demo = await launchDemo({ configArgs: cmd.args, trainerEntry: opts.trainerEntry, phases, lmSteps });
        process.exitCode = demo.status === 'failed' ? 1 : 0;
        return;
      }
      if (opts.phases !== undefined || opts.lmSteps !== undefined) throw new UsageError('--phases and --lm-steps are options of the built-in demo (launch with no --config)');
      const { launchLocal } = await import('./launcher');
      const summary = await launchLocal({ configFile: opts.config, configArgs: cmd.args, trainerEntry: opts.trainerEntry });
      process.exitCode = summary.status === 'finished' || summary.status === 'stopped' ? 0 : 1;
    });

  program
    .command('join')
    .description(
      'Start one more trainer for a job that `blip2 launch` runs on this machine (to add one, or replace one that ' +
        'was lost): it reads the run dir\'s job.resolved.json, the trainer\'s NATS user from nats.json (mode 0600) ' +
        'and the job token from job.token (or BLIP2_JOB_TOKEN). The coordinator takes it in at the next commit. ' +
        'Runs in the foreground (log also in <run-dir>/logs/<node-id>.log); Ctrl-C stops it, the job goes on. ' +
        'Exits with the trainer\'s status (0 when the job finished).',
    )
    .option('--job <id>', 'the job (default: the demo\'s, blip2-demo); its run dir is runs/<id> unless --run-dir')
    .option('--run-dir <dir>', 'the job\'s run dir (job.runDir)')
    .option('--node-id <id>', 'the trainer\'s node id (default: join-<host>-<4 hex digits>)')
    .addOption(new Option('--trainer-entry <script>', 'trainer entry script (tests)').default('trainer/main.ts').hideHelp())
    .action(async (opts: { job?: string; runDir?: string; nodeId?: string; trainerEntry: string }) => {
      const runDir = opts.runDir ?? resolve('runs', opts.job ?? String(DEMO_OVERRIDES['job.id']));
      const { joinJob } = await import('./job-join');
      process.exitCode = await joinJob({ runDir, jobId: opts.job, nodeId: opts.nodeId, trainerEntry: opts.trainerEntry });
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
      const { formatJobStatus, readJobStatus } = await import('./job-status');
      const report = await readJobStatus(config, { jobId: opts.job });
      process.stdout.write((opts.json ? JSON.stringify(report, null, 2) : formatJobStatus(report)) + '\n');
    });

  program
    .command('stop')
    .description(
      'End a running job through its NATS: the coordinator ends it at its next committed checkpoint (every ' +
        'checkpoint.intervalSteps steps, or the epoch\'s end), which is its final one; every process then exits 0 and ' +
        '`launch` reports the job stopped. Waits for the end unless --no-wait. The job token comes from job.token ' +
        '(BLIP2_JOB_TOKEN, --job.token) or the one `launch` left in <runDir>/job.token. Exit 2 when the job does not ' +
        'exist or the token is refused, 1 when NATS or the coordinator does not answer.',
    )
    .option('--config <file>', 'job config, YAML or JSON (default: the built-in demo)')
    .option('--job <id>', 'job id (default: job.id of the config)')
    .option('--no-wait', 'return once the coordinator has taken the request')
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .addHelpText('after', CONFIG_FLAGS_HELP)
    .action(async (opts: { config?: string; job?: string; wait: boolean }, cmd: Command) => {
      const { config } = loadJobConfig({ file: opts.config, argv: cmd.args, overrides: opts.config ? {} : DEMO_OVERRIDES });
      useLaunchedNats(config); // a job that `launch` runs on its own nats-server: its URL and user
      const say = (line: string) => process.stdout.write(line + '\n');
      const { stopJob } = await import('./job-stop');
      const r = await stopJob(config, { jobId: opts.job, wait: opts.wait, say });
      const jobId = opts.job ?? config.job.id;
      if (r.outcome === 'already-finished') say(`job ${jobId} has already ended${r.state ? ` (${r.state.reason})` : ''}; nothing to stop`);
      if (r.outcome === 'stopped') say(`job ${jobId} stopped: ${r.state!.reason}; final checkpoint ${r.state!.checkpointDir ?? 'none'}`);
    });

  program
    .command('report')
    .description(
      'Draw a run\'s charts from its metrics-<node>.jsonl files and summary.json: an HTML page (index.html) and ' +
        `one PNG per chart (${REPORT_CHARTS.map((c) => c.file).join(', ')}). Exit 2 when the run dir has no metrics.`,
    )
    .argument('<run-dir>', 'the job\'s run dir (job.runDir; the demo\'s is runs/blip2-demo)')
    .option('--out <dir>', 'where to write the page and images (default: <run-dir>/report)')
    .action(async (runDir: string, opts: { out?: string }) => {
      const { writeRunReport } = await import('./report');
      const r = await writeRunReport(runDir, opts.out);
      const say = (line: string) => process.stdout.write(line + '\n');
      say(`report of ${r.steps} step(s), objectives ${r.objectives.join(', ')}: ${r.html}`);
      for (const img of r.images) say(`  ${img}`);
      if (r.badLines) say(`  ${r.badLines} unreadable line(s) in the metrics files were left out`);
      if (!r.fontsFound) say('warning: no font files found (/usr/share/fonts): the images have no text; install one (Debian: fonts-dejavu-core)');
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
