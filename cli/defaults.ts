// The command line's settings that its help text and light commands read without loading what runs a job: the
// demo's config overrides and phases, the demo LM's pre-training settings, where a launched job keeps its NATS users,
// and the report's chart list. launcher.ts, demo.ts and report.ts re-export them; job-commands.ts reads them here
// so that `blip2 --help`, `status` and `stop` start without the launcher, the demo or the chart renderer.
import { join } from 'node:path';
import { UsageError, type JobConfig } from '../common';

/** The demo's settings (applied only when no config file is given; env and flags still win). */
export const DEMO_OVERRIDES: Record<string, unknown> = {
  'job.id': 'blip2-demo',
  'model.preset': 'demo',
  'world.trainers': 2,
  'world.min': 1,
  'train.epochs': 10,
  'train.batchSizePerTrainer': 16,
  'optim.warmupSteps': 20,
  'optim.lr': 2e-3,
  'checkpoint.intervalSteps': 50,
  'data.synthSamples': 3000,
  'data.synthImageSize': 32,
  // 32px images decode in microseconds: no decode thread (one fewer thread on the trainers' cores, none to start per epoch).
  'data.workers': 0,
  // The synthetic captions name both objects: a crop (LAVIS keeps 50-100 % of the area) can cut one out, and then the
  // caption is false. The demo trains on whole images, unflipped (the setting its README figures were measured with;
  // a flip would be safe, as a flipped image's caption has left and right swapped).
  'data.cropMinScale': 1,
  'data.flipProbability': 0,
};

/**
 * <runDir>/nats.json (mode 0600): the URL of the job's own nats-server while `launch` runs it and its users: `user`
 * and `password` (the launcher's, read-only: `blip2 status`, `blip2 stop`) and `roles` (coordinator, trainer,
 * launcher; `blip2 join` uses the trainer's).
 */
export const natsFileOf = (c: JobConfig) => join(c.job.runDir, 'nats.json');

/** The demo's phases, in the order they run (`blip2 launch --phases`). */
export const DEMO_PHASES = ['stage1', 'lm', 'stage2', 'eval'] as const;
export type DemoPhase = (typeof DEMO_PHASES)[number];

/** The demo's language model pre-training (`blip2 pretrain-lm` settings). */
export const DEMO_LM = { steps: 2000, batchSize: 16, lr: 3e-3, seed: 1 };

/** `--phases stage1,lm`: the phases, checked. */
export function parseDemoPhases(text: string): DemoPhase[] {
  const names = text.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = names.filter((n) => !(DEMO_PHASES as readonly string[]).includes(n));
  if (bad.length || !names.length) throw new UsageError(`--phases ${JSON.stringify(text)}: expected a comma-separated list of ${DEMO_PHASES.join(', ')}`);
  return DEMO_PHASES.filter((p) => names.includes(p));
}

/** The charts, in page order: file name, title, and what the chart draws (the page's caption). */
export const REPORT_CHARTS = [
  { file: 'loss.png', title: 'Loss per objective', caption: 'Loss of the global batch for each objective, by step (rank 0).' },
  { file: 'throughput.png', title: 'Throughput', caption: 'Global samples per second of each step (its samples over its compute time), over seconds since the first step (rank 0).' },
  { file: 'step-time.png', title: 'Step time by phase', caption: 'Seconds of each step in data, forward/backward, communication and optimizer (rank 0), stacked.' },
  { file: 'membership.png', title: 'Membership', caption: 'World size and membership generation, by step.' },
] as const;
