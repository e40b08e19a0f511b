import type { Command } from 'commander';

/** Subcommands about the model: `params`. */
export function registerModelCommands(program: Command): void {
  void program;
}
