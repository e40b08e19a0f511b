import type { Command } from 'commander';

/** Subcommands about jobs: `launch`, `config`. */
export function registerJobCommands(program: Command): void {
  void program;
}
