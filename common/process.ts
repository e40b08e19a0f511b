// Shared start-up of the job's processes (coordinator and trainer): split `--config FILE` from config flags, load and apply the config.
import { loadJobConfig, type LoadedJobConfig } from './config';
import { UsageError } from './errors';
import { createLogger, setLogFormat, setLogLevel } from './log';

/** `[--config FILE] [--key value | --key=value ...]` -> the loaded job config. */
export function loadProcessConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): LoadedJobConfig {
  const rest: string[] = [];
  let file: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--config') {
      file = argv[++i];
      if (!file) throw new UsageError('--config needs a file');
    } else if (a.startsWith('--config=')) file = a.slice('--config='.length);
    else rest.push(a);
  }
  const loaded = loadJobConfig({ file, env, argv: rest });
  setLogLevel(loaded.config.log.level);
  setLogFormat(loaded.config.log.format);
  return loaded;
}

/**
 * Exit status of a job process (coordinator, trainer) that a signal stopped before the job ended: 128 + SIGTERM, so a
 * supervisor that restarts failed processes (a Kubernetes Job) starts it again. 0 means the job ended.
 */
export const EXIT_SIGNALLED = 143;

/**
 * Runs `main`, mapping errors to a message and an exit status (2: bad input, 1: failure). Started by `blip2 launch`
 * (BLIP2_SUPERVISOR_PID names it), the process stops itself (SIGTERM, its usual stop) once that parent is gone, so
 * a launcher killed with SIGKILL leaves no trainer or coordinator behind.
 */
export function runProcess(component: string, main: () => Promise<number | void>): void {
  const log = createLogger(component);
  const supervisor = Number(process.env.BLIP2_SUPERVISOR_PID ?? '0');
  if (Number.isInteger(supervisor) && supervisor > 0 && process.ppid === supervisor) {
    const timer = setInterval(() => {
      if (process.ppid === supervisor) return;
      clearInterval(timer);
      log.warn('the launcher that started this process is gone: stopping', { launcher: supervisor });
      process.kill(process.pid, 'SIGTERM');
    }, 1000);
    timer.unref();
  }
  main().then(
    (code) => process.exit(code ?? 0),
    (e: Error) => {
      if (e instanceof UsageError) {
        process.stderr.write(`${component}: ${e.message}\n`);
        process.exit(2);
      }
      log.error('failed', { error: e.stack ?? e.message });
      process.exit(1);
    },
  );
}
