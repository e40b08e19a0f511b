// Entry point of the `blip2` command: each area of the project contributes its own subcommands.
import { Command, CommanderError } from 'commander';
import { Blip2Error, UsageError } from '../../common';
import { registerModelCommands } from '../../trainer/commands';
import { registerDataCommands } from '../../dataloader/commands';
import { registerJobCommands } from '../commands';

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
