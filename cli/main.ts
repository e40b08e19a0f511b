// Entry point of the `blip2` command (bin/blip2.js loads it): the model, data and job subcommands, each defined in
// this folder over the logic its room exports.
import { Command, CommanderError } from 'commander';
import { Blip2Error, UsageError } from '../common';
import { registerDataCommands } from './data-commands';
import { registerJobCommands } from './job-commands';
import { registerModelCommands } from './model-commands';

const program = new Command('blip2')
  .description('Distributed pre-training of the BLIP-2 Q-Former (stage 1 and 2) across a cluster.')
  .showHelpAfterError()
  .exitOverride();

registerModelCommands(program);
registerDataCommands(program);
registerJobCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  if (err instanceof UsageError || err instanceof Blip2Error) {
    process.stderr.write(`blip2: ${err.message}\n`);
    process.exit(2);
  }
  throw err;
}
