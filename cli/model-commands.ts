// The `blip2` subcommand about the model: `params` (trainable parameter counts of a preset and stage).
import { Option, type Command } from 'commander';
import { UsageError } from '../common';
import { paramManifest, presetConfig, PRESETS, trainableCount, trainableGroups, type Stage } from '../trainer/model';

/** Subcommands about the model: `params`. */
export function registerModelCommands(program: Command): void {
  program
    .command('params')
    .description('Print the number of trainable parameters of a model preset in a training stage.')
    .addOption(new Option('--preset <name>', `model preset (${Object.keys(PRESETS).join(', ')})`).default('blip2-opt-2.7b'))
    .addOption(new Option('--stage <n>', 'training stage: 1 (Q-Former pre-training) or 2 (language-model projection)').default('1'))
    .option('--by-group', 'also print the count of every parameter group (trainable or frozen)', false)
    .action((opts: { preset: string; stage: string; byGroup: boolean }) => {
      if (opts.stage !== '1' && opts.stage !== '2') throw new UsageError(`--stage must be 1 or 2, got "${opts.stage}"`);
      const stage = Number(opts.stage) as Stage;
      const config = presetConfig(opts.preset);
      const count = trainableCount(config, stage);
      process.stdout.write(`${count.toLocaleString('en-US')} trainable parameters (preset ${opts.preset}, stage ${stage})\n`);
      if (opts.byGroup) {
        const trained = new Set(trainableGroups(stage));
        // Stage 1 has no language model; stage 2 deletes the text-only Q-Former parts (LAVIS blip2_opt.py).
        const absent = new Set(stage === 1 ? ['language_projection', 'language_model'] : ['qformer_text']);
        const groups = new Map<string, number>();
        for (const p of paramManifest(config)) groups.set(p.group, (groups.get(p.group) ?? 0) + p.shape.reduce((a, b) => a * b, 1));
        for (const [g, n] of groups) process.stdout.write(`  ${g.padEnd(20)} ${n.toLocaleString('en-US').padStart(15)}  ${trained.has(g as never) ? 'trainable' : absent.has(g) ? 'not in this stage' : 'frozen'}\n`);
      }
    });
}
