// Entry point of the `blip2` command (bin/blip2.js loads it): the model, data, job, eval, caption and ask subcommands, each defined in
// this folder over the logic its room exports, and the exit statuses: 0 done (also help and --version), 1 failed,
// 2 bad input (commander's usage errors, UsageError, a missing path), each with a one-line `blip2: …` message.
// Every command's name, options and help are defined at start; its implementation is imported by its action when it
// runs, so `--help`, `--version` and the light commands start without the trainer (`npm run bench:cli` times it).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { Blip2Error, UsageError } from '../common';
import { registerDataCommands } from './data-commands';
import { registerEvalCommands } from './eval-commands';
import { registerInferenceCommands } from './inference-commands';
import { CommandFailedError, describePathError, EXIT_FAILED, EXIT_OK, EXIT_USAGE, isPathError } from './errors';
import { registerJobCommands } from './job-commands';
import { registerModelCommands } from './model-commands';

const packageFile = join(dirname(fileURLToPath(import.meta.url)), '..', 'package.json');
const { version } = JSON.parse(readFileSync(packageFile, 'utf8')) as { version: string };

/** The subcommand the arguments name (`data synth`), for the pointer to its help. */
function commandPath(): string {
  const names = ['blip2'];
  let cmd: Command = program;
  for (const arg of process.argv.slice(2)) {
    const sub = cmd.commands.find((c) => c.name() === arg || c.aliases().includes(arg));
    if (!sub) break;
    names.push(sub.name());
    cmd = sub;
  }
  return names.join(' ');
}

/** Commander's own error lines ("error: unknown option '--x'") become `blip2: …` lines with a pointer to --help. */
let usageReported = false;
const program = new Command('blip2')
  .description('Distributed pre-training of the BLIP-2 Q-Former (stage 1 and 2) across a cluster.')
  .version(version, '-V, --version', 'print the version and exit')
  .configureOutput({
    outputError: (str, write) => {
      usageReported = true;
      write(`blip2: ${str.trim().replace(/^error: /, '')} (see \`${commandPath()} --help\`)\n`);
    },
  })
  .exitOverride();

registerModelCommands(program);
registerDataCommands(program);
registerJobCommands(program);
registerEvalCommands(program);
registerInferenceCommands(program);

const fail = (message: string, code: number): never => {
  process.stderr.write(`blip2: ${message}\n`);
  process.exit(code);
};

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and --version end with exit code 0; every other commander error is a usage error. An action that throws
    // commander's InvalidArgumentError has not had its message printed yet.
    if (err.exitCode === EXIT_OK) process.exit(EXIT_OK);
    if (!usageReported) fail(err.message.replace(/^error: /, ''), EXIT_USAGE);
    process.exit(EXIT_USAGE);
  }
  if (err instanceof CommandFailedError) fail(err.message, EXIT_FAILED);
  if (err instanceof UsageError || err instanceof Blip2Error) fail(err.message, EXIT_USAGE);
  if (isPathError(err)) fail(describePathError(err), EXIT_USAGE);
  throw err;
}
