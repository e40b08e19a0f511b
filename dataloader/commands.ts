import type { Command } from 'commander';

/** Subcommands about datasets: `data synth`, `data index`. */
export function registerDataCommands(program: Command): void {
  void program;
}
